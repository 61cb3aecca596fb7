"""The New Training Job form in headless Chromium, for each way it used to train something other than what it
showed: resolution toggles against the text box, the architecture and the preset after Duplicate, "Apply YAML"
and a reload, a training adapter that could not be removed; and errors where the user is (a count in the sticky
bar that jumps to the first, the machine's checks at edit time, Create refusing), the guide's labels and starting
values, Show Advanced beside the form, and a failed job that says why and whose settings can be edited."""

from __future__ import annotations

import json
import time

import yaml
from browser import choose, click, needs_browser, reveal, shot, type_into, wait
from uiserver import UIServer

from conftest import REPO

pytestmark = needs_browser
SHAPES = str(REPO / "examples" / "shapes")


def _value(d, field_id: str) -> str:
    from selenium.webdriver.common.by import By

    return d.find_element(By.ID, field_id).get_attribute("value")


def _checked(d, css: str) -> bool:
    from selenium.webdriver.common.by import By

    return d.find_element(By.CSS_SELECTOR, css).is_selected()


def _config(d) -> dict:
    """The config the form would submit, resolved as the server does (what trains)."""
    return d.execute_async_script(
        "const done = arguments[0];"
        "fetch('/api/config/resolve', {method: 'POST', headers: {'Content-Type': 'application/json'},"
        " body: JSON.stringify({config: JSON.parse(localStorage.getItem('zlora.newjob')).draft, baseline: true})})"
        ".then((r) => r.json()).then((r) => done(r.config));"
    )


def _open_form(d, server):
    from selenium.webdriver.common.by import By

    d.get(server.url + "/#/new")
    wait(lambda: d.find_element(By.ID, "f-job-name"), 20, "the form")
    wait(lambda: _value(d, "f-train-steps"), 10, "resolved values")


def test_the_form_shows_what_trains_in_the_guides_words(browser, tmp_path):
    from selenium.webdriver.common.by import By

    server = UIServer(tmp_path / "ui").start()
    d = browser
    try:
        machine = server.call("GET", "/api/machine")[1]
        _open_form(d, server)
        # the guide's baseline, in its words (AdamW8Bit needs CUDA: AdamW on a machine without one)
        assert _value(d, "f-model-arch") == "zimage:turbo" and _value(d, "f-train-steps") == "2500"
        arch = d.find_element(By.CSS_SELECTOR, "#f-model-arch option[value='zimage:turbo']").text
        assert arch == "Z-Image Turbo (w/ Training Adapter)"
        assert _value(d, "f-train-optimizer") == "adamw8bit"  # the guide's; bitsandbytes runs it on CPU too
        assert (_value(d, "f-network-linear"), _value(d, "f-train-lr")) == ("16", "0.0001")
        assert _value(d, "f-model-assistant_lora_path").endswith(
            "zimage_turbo_training_adapter_v2.safetensors"
        )
        assert [
            _checked(d, f"[data-path='datasets.0.resolution'] [data-res='{r}']") for r in (512, 768, 1024)
        ] == [
            True,
            True,
            True,
        ]
        assert _checked(d, "#f-datasets-0-cache_latents") and _checked(d, "#f-train-cache_text_embeddings")
        assert [
            _value(d, f"f-sample-{k}") for k in ("width", "sample_every", "sample_steps", "guidance_scale")
        ] == [
            "1024",
            "250",
            "9",
            "0",
        ]
        label = d.find_element(By.CSS_SELECTOR, "label[for='f-network-linear']").text
        assert label.startswith("Linear Rank")
        compile_ = d.find_element(By.ID, "f-train-compile")
        assert compile_.tag_name == "select" and {
            o.get_attribute("value") for o in compile_.find_elements(By.TAG_NAME, "option")
        } == {"auto", "true", "false"}

        # Target Type: LoKr's own fields only under LoKr, and what the form shows trains
        assert not d.find_elements(By.ID, "f-network-lokr_factor")
        choose(d, "f-network-type", "lokr")
        wait(lambda: d.find_elements(By.ID, "f-network-lokr_factor"), 10, "LoKr Factor shown")
        type_into(d, "f-network-lokr_factor", "8")
        net = _config(d)["network"]
        assert (net["type"], net["lokr_factor"], net["lokr_full_rank"]) == ("lokr", 8, False)
        choose(d, "f-network-type", "loha")
        wait(lambda: not d.find_elements(By.ID, "f-network-lokr_factor"), 10, "LoKr Factor hidden")
        types = d.find_element(By.ID, "f-network-type").find_elements(By.TAG_NAME, "option")
        assert [o.text for o in types] == ["LoRA", "LoKr", "LoHa", "DoRA"]
        choose(d, "f-network-type", "dora")
        wait(lambda: _config(d)["network"]["type"] == "dora", 10, "DoRA in the config")
        choose(d, "f-network-type", "lora")

        # resolutions: the toggles and the text box are two views of one list
        click(d, d.find_element(By.CSS_SELECTOR, "[data-path='datasets.0.resolution'] [data-res='512']"))
        wait(lambda: _value(d, "f-datasets-0-resolution") == "768, 1024", 10, "512 off in the text")
        click(d, d.find_element(By.CSS_SELECTOR, "[data-path='datasets.0.resolution'] [data-res='256']"))
        wait(lambda: _value(d, "f-datasets-0-resolution") == "256, 768, 1024", 10, "256 on in the text")
        type_into(d, "f-datasets-0-resolution", "640, 1024")
        wait(lambda: not _checked(d, "[data-path='datasets.0.resolution'] [data-res='768']"), 10, "768 off")
        assert _checked(d, "[data-path='datasets.0.resolution'] [data-res='1024']")
        assert _config(d)["datasets"][0]["resolution"] == [640, 1024]

        # the training adapter can be removed (empty or null), and stays removed
        type_into(d, "f-model-assistant_lora_path", "")
        assert _config(d)["model"]["assistant_lora_path"] is None
        type_into(d, "f-train-steps", "2400")
        assert (
            _value(d, "f-model-assistant_lora_path") == ""
            and _config(d)["model"]["assistant_lora_path"] is None
        )
        type_into(d, "f-model-assistant_lora_path", "v1")
        assert _config(d)["model"]["assistant_lora_path"].endswith("adapter_v1.safetensors")
        type_into(d, "f-model-assistant_lora_path", "null")
        assert (
            _config(d)["model"]["assistant_lora_path"] is None
            and _value(d, "f-model-assistant_lora_path") == ""
        )

        # the guide's Low VRAM / Layer Offloading in the Model panel: a switch and a block count (a number or auto)
        model_panel = d.find_element(By.ID, "panel-model").text
        assert "Low VRAM" in model_panel and "Layer Offloading (blocks to swap)" in model_panel
        type_into(d, "f-model-blocks_to_swap", "8")
        assert _config(d)["model"]["blocks_to_swap"] == 8
        type_into(d, "f-model-blocks_to_swap", "auto")
        assert _config(d)["model"]["blocks_to_swap"] == "auto"
        type_into(d, "f-model-blocks_to_swap", "")
        assert _config(d)["model"]["blocks_to_swap"] is None

        # errors where the user is: checked as `zlora train` would, at edit time, counted in the sticky bar
        type_into(d, "f-model-name_or_path", "builtin:tiny")
        type_into(d, "f-datasets-0-folder_path", str(tmp_path / "no-such-folder"))
        type_into(d, "f-job-device", "cuda" if not machine["cuda"] else f"cuda:{len(machine['cuda'])}")
        invalid = lambda: {  # noqa: E731
            e.get_attribute("data-path") for e in d.find_elements(By.CSS_SELECTOR, ".field.invalid")
        }
        want = {"datasets.0.folder_path", "job.device"}
        wait(lambda: invalid() == want, 10, f"errors beside {want}")
        bar = d.find_element(By.ID, "actionbar")
        assert bar.value_of_css_property("position") == "sticky"
        problems = d.find_element(By.ID, "problems")
        assert problems.text.startswith(f"{len(want)} problems")
        d.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        problems.click()
        focused = d.switch_to.active_element
        assert d.execute_script("return arguments[0].closest('.field').dataset.path", focused) in want
        d.find_element(By.ID, "submit").click()
        time.sleep(1.0)
        assert "#/new" in d.current_url and server.call("GET", "/api/jobs")[1] == []
        shot(d, "new-job-problems", tmp_path)

        # Show Advanced: the YAML beside the form, the button says Hide, the problems beside the YAML
        toggle = d.find_element(By.ID, "toggle-advanced")
        toggle.click()
        panel = d.find_element(By.ID, "yaml-panel")
        assert panel.is_displayed() and toggle.text == "Hide Advanced"
        assert panel.location["x"] > d.find_element(By.ID, "panels").location["x"] + 300
        assert "no CUDA device" in d.find_element(By.ID, "yaml-errors").text or machine["cuda"]
        toggle.click()
        assert not panel.is_displayed() and toggle.text == "Show Advanced"
    finally:
        server.kill()


def test_duplicate_yaml_apply_and_reload_follow_a_new_architecture_and_preset(browser, tmp_path):
    from selenium.webdriver.common.by import By

    server = UIServer(tmp_path / "ui").start()
    d = browser
    config = {
        "job": {"name": "turbo1", "device": "cpu"},
        "model": {"arch": "zimage:turbo", "name_or_path": "builtin:tiny", "assistant_lora_path": None},
        "network": {"linear": 4, "linear_alpha": 4, "preset": "attn"},
        "train": {"steps": 4},
        "datasets": [{"folder_path": SHAPES, "resolution": [64]}],
    }
    try:
        status, job = server.call("POST", "/api/jobs", {"config_yaml": json.dumps(config), "start": False})
        assert status == 200, job
        d.get(server.url + "/#/jobs")
        wait(
            lambda: d.find_element(By.CSS_SELECTOR, "#jobs tr[data-id='1'] button[data-action=duplicate]"),
            20,
            "the job",
        ).click()
        wait(lambda: _value(d, "f-job-name") == "turbo1-2", 20, "the copy in the form")
        assert (_value(d, "f-sample-sample_steps"), _value(d, "f-sample-guidance_scale")) == ("9", "0")
        choose(d, "f-model-arch", "zimage:deturbo")
        wait(lambda: _value(d, "f-sample-sample_steps") == "25", 10, "De-Turbo's preview steps")
        assert _value(d, "f-sample-guidance_scale") == "3"
        cfg = _config(d)
        assert (cfg["model"]["name_or_path"], cfg["model"]["assistant_lora_path"]) == ("builtin:tiny", None)
        assert cfg["sample"]["sample_steps"] == 25 and cfg["network"]["linear"] == 4

        # "Apply YAML" of the full, resolved YAML keeps only the choices: the preset moves the module list
        d.find_element(By.ID, "toggle-advanced").click()
        box = d.find_element(By.ID, "yaml")
        text = wait(lambda: box.get_attribute("value"), 10, "the YAML")
        assert "target_modules:" in text and "sample_steps: 25" in text
        edited = yaml.safe_load(text)
        edited["train"]["steps"] = 6
        d.execute_script("arguments[0].value = arguments[1]", box, yaml.safe_dump(edited, sort_keys=False))
        d.find_element(By.ID, "yaml-apply").click()
        wait(lambda: _value(d, "f-train-steps") == "6", 10, "steps 6 in the form")
        choose(d, "f-network-preset", "attn_ff_adaln")
        modules = d.find_element(By.ID, "f-network-target_modules")
        reveal(d, modules)
        wait(lambda: "adaLN_modulation.0" in modules.get_attribute("value"), 10, "adaLN in the module list")
        assert "adaLN_modulation.0" in _config(d)["network"]["target_modules"]
        choose(d, "f-model-arch", "zimage")
        wait(lambda: _value(d, "f-sample-sample_steps") == "30", 10, "Base's preview steps")

        # a reload keeps the form, and the architecture still moves what came from it
        d.refresh()
        wait(lambda: _value(d, "f-sample-sample_steps") == "30", 20, "the form after a reload")
        assert _value(d, "f-job-name") == "turbo1-2" and _value(d, "f-train-steps") == "6"
        choose(d, "f-model-arch", "zimage:turbo")
        wait(lambda: _value(d, "f-sample-sample_steps") == "9", 10, "Turbo's preview steps again")
    finally:
        server.kill()


def test_a_failed_job_says_why_and_its_settings_can_be_edited(browser, tmp_path):
    from selenium.webdriver.common.by import By

    server = UIServer(tmp_path / "ui").start()
    d = browser
    config = {  # a rank wider than the tiny model's modules: fails at start-up, after the pre-flight check
        "job": {"name": "wide", "device": "cpu"},
        "model": {"name_or_path": "builtin:tiny", "dtype": "fp32"},
        "network": {"linear": 100, "linear_alpha": 100},
        "train": {"steps": 3, "gradient_checkpointing": False},
        "datasets": [{"folder_path": SHAPES, "resolution": [64]}],
    }
    try:
        status, job = server.call("POST", "/api/jobs", {"config_yaml": json.dumps(config)})
        assert status == 200, job
        server.wait_job(job["id"], lambda j: j["status"] == "failed", 120)
        d.get(f"{server.url}/#/jobs")
        wait(
            lambda: d.find_element(By.CSS_SELECTOR, "#jobs tr[data-id='1'] button[data-action=resume]"),
            20,
            "Resume",
        ).click()
        box = lambda: d.find_element(By.ID, "resume-failed")  # noqa: E731 - re-rendered with each update
        wait(lambda: box().is_displayed(), 20, "why it failed, on the job page")
        assert wait(lambda: "more than the width" in box().text, 10, "the reason it failed")
        wait(lambda: click(d, box().find_element(By.CSS_SELECTOR, "button[data-action=edit]")), 10, "Edit")
        wait(lambda: _value(d, "f-network-linear") == "100", 20, "the job's settings in the form")
        assert wait(lambda: d.find_element(By.TAG_NAME, "h1").text == "Edit job 1", 10, "the Edit title")
        type_into(d, "f-network-linear", "4")
        type_into(d, "f-network-linear_alpha", "4")
        d.find_element(By.ID, "submit").click()
        wait(lambda: "#/jobs/1" in d.current_url, 20, "back on the job page")
        wait(lambda: d.find_element(By.ID, "job-status").text == "done", 180, "the edited job to finish")
        assert yaml.safe_load(server.call("GET", "/api/jobs/1")[1]["config_yaml"])["network"]["linear"] == 4
    finally:
        server.kill()
