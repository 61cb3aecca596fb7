"""Shared fixtures: the tiny Z-Image (built once per session, saved in the diffusers layout), a small captioned
dataset, and a config factory. Nothing here downloads anything."""

from __future__ import annotations

import copy
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

# Every test (and every `zlora` subprocess a test starts) uses a private cache: builtin:tiny is built there.
os.environ.setdefault(
    "ZLORA_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "zlora")
)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parent.parent
ZLORA = [sys.executable, "-m", "zlora"]
COLORS = [(220, 40, 40), (40, 60, 200), (40, 180, 70), (240, 210, 30)]


def aitk_job(**process) -> dict:
    """A minimal ai-toolkit job file whose one trainer process holds ``process`` (network=..., train=...)."""
    return {"job": "extension", "config": {"name": "x", "process": [{"type": "sd_trainer", **process}]}}


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    from zlora.models.tiny import builtin_tiny_path

    return builtin_tiny_path()


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    """Four 48x48 images (solid colour + a square), each with a caption file."""
    folder = tmp_path_factory.mktemp("dataset")
    for i, color in enumerate(COLORS):
        im = Image.new("RGB", (48, 48), color)
        im.paste((255, 255, 255), (8 + 4 * i, 8, 24 + 4 * i, 24))
        im.save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a colour swatch number {i}\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def adapter_file(tmp_path_factory, tiny_dir) -> str:
    """An ai-toolkit-style adapter: ``diffusion_model.*`` keys, no ``.alpha`` (alpha = rank), layers + refiners."""
    from safetensors.torch import save_file

    from zlora.models.load import load_components

    transformer = load_components(tiny_dir, torch.float32).transformer
    g = torch.Generator().manual_seed(5)
    sd = {}
    for name, mod in transformer.named_modules():
        if name.endswith(("attention.to_q", "attention.to_v", "feed_forward.w1", "feed_forward.w2")):
            sd[f"diffusion_model.{name}.lora_A.weight"] = torch.randn(4, mod.in_features, generator=g) * 0.2
            sd[f"diffusion_model.{name}.lora_B.weight"] = torch.randn(mod.out_features, 4, generator=g) * 0.2
    path = tmp_path_factory.mktemp("adapter") / "adapter_v2.safetensors"
    save_file(sd, str(path))
    return str(path)


BASE_CONFIG = {
    "job": {
        "name": "t",
        "output_dir": "OUT",
        "trigger_word": "zlr",
        "device": "cpu",
    },  # exact CPU numbers, also on CUDA
    "model": {"name_or_path": "builtin:tiny", "dtype": "fp32"},
    "network": {"linear": 4, "linear_alpha": 4},
    "save": {"dtype": "fp32", "save_every": 1000, "max_step_saves_to_keep": 2},
    "train": {"steps": 4, "batch_size": 2, "lr": 1e-3, "seed": 0, "gradient_checkpointing": False},
    "datasets": [{"folder_path": "DATA", "resolution": 32, "caption_dropout_rate": 0.0}],
    "sample": {"sample_every": 1000, "prompts": [], "width": 32, "height": 32, "sample_steps": 2},
}


@pytest.fixture
def make_config(tmp_path, dataset_dir, tiny_dir):
    """``make_config({"train": {"steps": 3}})`` -> a validated Config writing into tmp_path/out."""
    from zlora.config import parse_config

    def make(changes: dict | None = None, as_dict: bool = False):
        data = copy.deepcopy(BASE_CONFIG)
        data["job"]["output_dir"] = str(tmp_path / "out")
        data["datasets"][0]["folder_path"] = str(dataset_dir)
        for section, values in (changes or {}).items():
            if isinstance(values, dict):
                data.setdefault(section, {}).update(values)
            else:
                data[section] = values
        return data if as_dict else parse_config(data)

    return make


@pytest.fixture
def browser():
    """A headless Chromium (Debian's chromium + chromium-driver) driven by Selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = shutil.which("chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1360,900",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
    yield driver
    driver.quit()
