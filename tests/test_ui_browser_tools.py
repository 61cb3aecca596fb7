"""Web UI part 2 pages in headless Chromium: a dataset created, filled by upload, a caption edited (saved while
typing, there after a reload) and bulk-edited; a LoRA uploaded, inspected (heat map), scaled and converted into new
files; a model pulled from a hub-compatible server with a live progress bar; an image generated.

With ZLORA_SCREENSHOTS=1 the README's screenshots of these pages are written to docs/screenshots/."""

from __future__ import annotations

import os

import torch
from browser import needs_browser, shot, type_into, wait  # noqa: F401 - the fixture
from hubserver import FakeHub
from PIL import Image
from safetensors.torch import save_file
from uiserver import UIServer

from zlora.lora.codecs import write_modules
from zlora.lora.modules import LoraModule

pytestmark = needs_browser


def test_datasets_lora_tools_models_and_generate_pages(browser, tmp_path, tiny_dir):  # noqa: F811
    from selenium.webdriver.common.by import By

    d = browser
    hub = FakeHub()
    hub.add_repo("org/tiny-zimage", tiny_dir)
    url = hub.start()
    server = UIServer(tmp_path / "ui", env={**os.environ, "HF_HUB_OFFLINE": "0"}).start()
    files = []
    for i, color in enumerate([(220, 40, 40), (40, 60, 200), (40, 180, 70)]):
        p = tmp_path / f"shape{i}.png"
        Image.new("RGB", (96 + 32 * i, 96), color).save(p)
        files.append(str(p))
    (tmp_path / "shape0.txt").write_text("a red square")
    files.append(str(tmp_path / "shape0.txt"))
    try:
        # ---- datasets
        d.get(server.url + "/#/datasets")
        type_into(d, "ds-name", "shapes")
        d.find_element(By.ID, "ds-create").click()
        wait(lambda: d.find_element(By.ID, "ds-files"), 10, "the upload field")
        d.find_element(By.ID, "ds-files").send_keys("\n".join(files))
        wait(lambda: len(d.find_elements(By.CSS_SELECTOR, "#ds-grid .ds-item")) == 3, 20, "three images")
        box = d.find_element(By.CSS_SELECTOR, "textarea[data-image='shape1.png']")
        box.send_keys("a blue square")
        wait(
            lambda: "saved" in d.find_element(By.CSS_SELECTOR, ".ds-item[data-name='shape1.png']").text,
            10,
            "saved",
        )
        d.refresh()
        wait(
            lambda: (
                d.find_element(By.CSS_SELECTOR, "textarea[data-image='shape1.png']").get_attribute("value")
                == "a blue square"
            ),
            10,
            "the caption after a reload",
        )
        d.find_element(By.CSS_SELECTOR, "#bulk-action option[value=insert_trigger]").click()
        d.find_element(By.ID, "bulk-apply").click()
        wait(
            lambda: (
                d.find_element(By.CSS_SELECTOR, "textarea[data-image='shape0.png']").get_attribute("value")
                == "[trigger], a red square"
            ),
            10,
            "the bulk edit",
        )
        assert (
            tmp_path / "ui" / "datasets" / "shapes" / "shape1.txt"
        ).read_text().strip() == "[trigger], a blue square"
        shot(d, "datasets", tmp_path)

        # ---- LoRA tools
        g = torch.Generator().manual_seed(0)
        lora = tmp_path / "mine.safetensors"
        modules = {
            f"layers.{i}.attention.to_{c}": LoraModule(
                torch.randn(4, 64, generator=g), torch.randn(64, 4, generator=g), 4.0
            )
            for i in range(2)
            for c in ("q", "k", "v", "out.0")
        }
        save_file(write_modules(modules, "zlora"), str(lora))
        d.get(server.url + "/#/loras")
        wait(lambda: d.find_element(By.ID, "lora-upload"), 10, "the LoRA tools page")
        d.find_element(By.ID, "lora-upload").send_keys(str(lora))
        wait(
            lambda: "mine.safetensors" in d.find_element(By.ID, "lora-pick").text,
            10,
            "the upload in the list",
        )
        d.find_element(By.ID, "lora-inspect").click()
        wait(lambda: len(d.find_elements(By.CSS_SELECTOR, "#lora-heat tr")) == 3, 20, "the heat map")
        d.execute_script(
            "const s = document.getElementById('s-qk'); s.value = 0.5; s.dispatchEvent(new Event('input'))"
        )
        d.find_element(By.ID, "lora-scale").click()
        wait(
            lambda: len(d.find_elements(By.CSS_SELECTOR, "#lora-result .result")) == 1, 20, "the scaled file"
        )
        d.find_element(By.CSS_SELECTOR, "#lora-to option[value=comfy-fused]").click()
        d.find_element(By.ID, "lora-convert").click()
        wait(
            lambda: "zlora -> comfy-fused" in d.find_element(By.ID, "lora-result").text,
            20,
            "the converted file",
        )
        shot(d, "lora-tools", tmp_path)

        # ---- models
        d.get(server.url + "/#/models")
        type_into(d, "set-endpoint", "not a url")
        d.find_element(By.ID, "set-save").click()
        wait(lambda: "is not a URL" in d.find_element(By.ID, "models-msg").text, 10, "the endpoint error")
        type_into(d, "set-endpoint", url)
        type_into(d, "set-models-dir", str(tmp_path / "models"))
        d.find_element(By.ID, "set-save").click()
        wait(lambda: url in d.find_element(By.ID, "set-effective").text, 10, "the saved endpoint")
        type_into(d, "pull-ref", "org/tiny-zimage")
        d.find_element(By.ID, "pull").click()
        wait(
            lambda: (
                d.find_element(By.CSS_SELECTOR, ".task[data-id='1']").get_attribute("data-status") == "done"
            ),
            60,
            "the pull",
        )
        assert d.find_element(By.CSS_SELECTOR, ".task[data-id='1'] progress").get_attribute("value") == "100"
        wait(lambda: "org/tiny-zimage" in d.find_element(By.ID, "models").text, 10, "the pulled model")
        shot(d, "models", tmp_path)

        # ---- generate
        d.get(server.url + "/#/generate")
        value = lambda i: d.find_element(By.ID, i).get_attribute("value")  # noqa: E731
        # builtin:shapes is the default, with its own sampling settings; builtin:tiny brings Turbo's
        assert wait(
            lambda: (
                [value(i) for i in ("gen-model", "gen-steps", "gen-guidance", "gen-width")]
                == ["builtin:shapes", "20", "1", "64"]
            ),
            10,
            "builtin:shapes' settings",
        )
        type_into(d, "gen-model", "builtin:tiny")
        assert [value(i) for i in ("gen-steps", "gen-width")] == ["9", "1024"]
        type_into(d, "gen-prompt", "a red square")
        type_into(d, "gen-steps", "2")
        type_into(d, "gen-width", "32")
        type_into(d, "gen-height", "32")
        d.find_element(By.ID, "gen-run").click()
        img = wait(lambda: d.find_element(By.ID, "gen-image"), 120, "the image")
        assert wait(
            lambda: d.execute_script("return arguments[0].naturalWidth", img) == 32, 10, "a 32 px image"
        )
        shot(d, "generate", tmp_path)
    finally:
        server.kill()
        hub.stop()
