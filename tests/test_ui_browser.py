"""The web UI in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium): fill the New
Training Job form for the built-in tiny model and the bundled dataset, round-trip it through the YAML editor,
submit, watch the job finish, see the loss graph and a sample; duplicate it, stop and resume the copy.

With ZLORA_SCREENSHOTS=1 the README's screenshots are written to docs/screenshots/."""

from __future__ import annotations

import time

from browser import choose, click, needs_browser, shot, type_into, wait  # noqa: F401 - the fixture
from uiserver import UIServer

from conftest import REPO

pytestmark = needs_browser


def test_form_to_finished_job_then_stop_and_resume_a_copy(browser, tmp_path):
    from selenium.webdriver.common.by import By

    server = UIServer(tmp_path / "ui").start()
    d = browser
    try:
        d.get(server.url + "/#/new")
        wait(lambda: d.find_element(By.ID, "f-job-name"), 20, "the form")
        type_into(d, "f-job-name", "browser1")
        type_into(d, "f-job-trigger_word", "zlr")
        type_into(d, "f-job-device", "cpu")
        type_into(d, "f-model-name_or_path", "builtin:tiny")
        choose(d, "f-model-dtype", "fp32")
        type_into(d, "f-network-linear", "4")
        type_into(d, "f-network-linear_alpha", "4")
        type_into(d, "f-train-steps", "16")
        type_into(d, "f-train-batch_size", "2")
        type_into(d, "f-save-save_every", "8")
        type_into(d, "f-datasets-0-folder_path", str(REPO / "examples" / "shapes"))
        type_into(d, "f-datasets-0-resolution", "64")
        type_into(d, "f-sample-sample_every", "8")
        type_into(d, "f-sample-width", "64")
        type_into(d, "f-sample-height", "64")
        type_into(d, "f-sample-sample_steps", "2")
        prompts = d.find_element(By.ID, "f-sample-prompts")
        prompts.send_keys("a red circle\nzlr, a yellow square")
        d.find_element(By.ID, "f-job-name").click()  # leave the textarea: its change event fires
        time.sleep(0.5)
        assert wait(
            lambda: (
                not d.find_element(By.ID, "form-errors").text.strip()
                and not d.find_elements(By.CSS_SELECTOR, ".field.invalid")
            ),
            10,
            "a valid form",
        )
        shot(d, "new-job", tmp_path)

        # "Show Advanced": the YAML is the form's config; an edit there comes back into the form
        d.find_element(By.ID, "toggle-advanced").click()
        yaml_box = d.find_element(By.ID, "yaml")
        text = wait(lambda: yaml_box.get_attribute("value"), 10, "the YAML")
        assert "name: browser1" in text and "name_or_path: builtin:tiny" in text and "steps: 16" in text
        d.execute_script(
            "arguments[0].value = arguments[0].value.replace('steps: 16', 'steps: 18')", yaml_box
        )
        d.find_element(By.ID, "yaml-apply").click()
        wait(
            lambda: d.find_element(By.ID, "f-train-steps").get_attribute("value") == "18",
            10,
            "steps 18 in the form",
        )
        assert d.find_element(By.ID, "f-model-name_or_path").get_attribute("value") == "builtin:tiny"

        d.find_element(By.ID, "submit").click()
        wait(lambda: "#/jobs/" in d.current_url, 20, "the job page")
        wait(lambda: d.find_element(By.ID, "job-status").text == "done", 180, "the job to finish")
        assert wait(lambda: d.find_element(By.ID, "stat-step").text == "18 / 18", 10, "the last step")
        wait(
            lambda: d.execute_script(
                "const c = document.getElementById('loss-chart'); const px = c.getContext('2d')"
                ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
                "for (let i = 3; i < px.length; i += 4) n += px[i] > 0; return n > 500;"
            ),
            20,
            "the loss graph",
        )
        img = wait(
            lambda: d.find_element(By.CSS_SELECTOR, "#gallery .row[data-step='18'] img"), 20, "a sample"
        )
        assert wait(lambda: d.execute_script("return arguments[0].naturalWidth", img) == 64, 10, "the image")
        # watched live from step 0 on, the comparison moved on with the run: step 0 vs the newest
        assert [b.text for b in d.find_elements(By.CSS_SELECTOR, "#compare .col b")] == ["step 0", "step 18"]
        assert len(d.find_elements(By.CSS_SELECTOR, "#compare img")) == 4  # two prompts each
        rows = d.find_elements(By.CSS_SELECTOR, "#gallery .row span.prompt")
        assert [r.text for r in rows] == [
            "a red circle",
            "zlr, a yellow square",
        ]  # the prompt, not its number
        d.find_element(By.CSS_SELECTOR, "#gallery-steps button[data-step='8']").click()
        wait(
            lambda: d.find_elements(By.CSS_SELECTOR, "#gallery .row[data-step='8'] img"),
            10,
            "step 8's previews",
        )
        img = d.find_element(By.CSS_SELECTOR, "#gallery .row[data-step='8'] img")
        img.click()
        assert "hidden" not in d.find_element(By.ID, "modal").get_attribute("class")
        assert "a red circle" in d.find_element(By.ID, "modal-caption").text
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        ActionChains(d).send_keys(Keys.ESCAPE).perform()
        wait(lambda: "hidden" in d.find_element(By.ID, "modal").get_attribute("class"), 5, "Escape to close")
        links = lambda: [a.text for a in d.find_elements(By.CSS_SELECTOR, "#files a")]  # noqa: E731
        assert wait(lambda: "browser1.safetensors" in links(), 10, "the download links")
        shot(d, "job", tmp_path)

        # duplicate as a new job, stop it mid-way, resume it
        wait(
            lambda: click(d, d.find_element(By.CSS_SELECTOR, "button[data-action=duplicate]")),
            10,
            "button[data-action=duplicate]",
        )  # re-rendered as status moves
        wait(
            lambda: d.find_element(By.ID, "f-job-name").get_attribute("value") == "browser1-2", 20, "the copy"
        )
        type_into(d, "f-train-steps", "400")
        type_into(d, "f-save-save_every", "4")
        type_into(d, "f-sample-sample_every", "1000")
        d.find_element(By.ID, "submit").click()
        wait(
            lambda: "#/jobs/" in d.current_url and d.find_element(By.ID, "job-status").text == "running",
            60,
            "the copy to run",
        )
        wait(lambda: int(d.find_element(By.ID, "stat-step").text.split(" / ")[0]) >= 5, 60, "a few steps")
        wait(
            lambda: click(d, d.find_element(By.CSS_SELECTOR, "button[data-action=stop]")),
            10,
            "button[data-action=stop]",
        )  # re-rendered as status moves
        wait(lambda: d.find_element(By.ID, "job-status").text == "stopped", 60, "the stop")
        assert wait(
            lambda: d.find_element(By.ID, "stat-eta").text == "–", 10, "no ETA"
        )  # a stopped job has none
        at = int(d.find_element(By.ID, "stat-step").text.split(" / ")[0])
        wait(
            lambda: click(d, d.find_element(By.CSS_SELECTOR, "button[data-action=resume]")),
            10,
            "button[data-action=resume]",
        )  # re-rendered as status moves
        wait(lambda: int(d.find_element(By.ID, "stat-step").text.split(" / ")[0]) > at + 3, 90, "training on")
        wait(lambda: "resumed from" in d.find_element(By.ID, "log").text, 20, "the resume in the log")
        d.get(server.url + "/#/jobs")
        wait(lambda: len(d.find_elements(By.CSS_SELECTOR, "#jobs tr[data-id]")) == 2, 10, "the job list")
        shot(d, "jobs", tmp_path)
        wait(
            lambda: click(
                d, d.find_element(By.CSS_SELECTOR, "#jobs tr[data-id='2'] button[data-action=stop]")
            ),
            10,
            "#jobs tr[data-id='2'] button[data-action=stop]",
        )  # re-rendered as status moves
        wait(
            lambda: "stopped" in d.find_element(By.CSS_SELECTOR, "#jobs tr[data-id='2']").text, 60, "stopped"
        )
    finally:
        server.kill()


def test_job_page_shows_the_judges_scores_of_a_builtin_shapes_run(browser, tmp_path):
    from selenium.webdriver.common.by import By

    stars = REPO / "examples" / "stars"
    config = f"""
job: {{name: shapes1, trigger_word: zlr, device: cpu}}
model: {{name_or_path: "builtin:shapes", dtype: fp32}}
network: {{linear: 4, linear_alpha: 4}}
train: {{steps: 4, batch_size: 2, gradient_checkpointing: false}}
datasets: [{{folder_path: {stars}, resolution: [64], cache_latents: false}}]
sample: {{sample_every: 2, prompts: ["a red zlr on a blue background", "a red circle on a blue background"],
          width: 64, height: 64, sample_steps: 4, guidance_scale: 3.0}}
"""
    server = UIServer(tmp_path / "ui").start()
    try:
        status, job = server.call("POST", "/api/jobs", {"config_yaml": config, "start": True})
        assert status == 200, job
        server.wait_job(job["id"], lambda j: j["status"] == "done", 180)
        browser.get(f"{server.url}/#/jobs/{job['id']}")
        rows = wait(
            lambda: browser.find_elements(By.CSS_SELECTOR, "#judge table tbody tr"), 20, "the judge table"
        )
        cells = [[td.text for td in r.find_elements(By.TAG_NAME, "td")] for r in rows]
        assert [c[0] for c in cells] == ["0", "2", "4"] and cells[0][3] == "0%", cells
        assert wait(
            lambda: browser.find_element(By.ID, "stat-step").text == "4 / 4", 10, "step 4 / 4"
        )  # judge rows leave the progress alone
    finally:
        server.kill()
