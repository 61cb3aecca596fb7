import subprocess

import numpy as np
from PIL import Image

from conftest import ZLORA
from zlora.cli.common import parse_lora_arg as _parse_lora_arg
from zlora.train.trainer import run_training


def test_lora_argument_weight_parsing():
    assert _parse_lora_arg("a.safetensors") == ("a.safetensors", 1.0)
    assert _parse_lora_arg("a.safetensors:0.5") == ("a.safetensors", 0.5)
    assert _parse_lora_arg(r"C:\x\a.safetensors") == (r"C:\x\a.safetensors", 1.0)


def test_generate_applies_the_lora_at_its_weight(make_config, tmp_path):
    cfg = make_config({"train": {"steps": 3, "lr": 2e-2}})
    lora = run_training(cfg)
    common = [
        *ZLORA,
        "generate",
        "--model",
        "builtin:tiny",
        "--prompt",
        "a swatch",
        "--steps",
        "3",
        "--width",
        "32",
        "--height",
        "32",
        "--seed",
        "1",
    ]
    outs = {}
    for name, extra in (("base", []), ("full", ["--lora", str(lora)]), ("zero", ["--lora", f"{lora}:0"])):
        out = tmp_path / f"{name}.png"
        r = subprocess.run([*common, *extra, "--out", str(out)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        outs[name] = np.asarray(Image.open(out), dtype=np.int16)
    assert outs["base"].shape == (32, 32, 3)
    assert np.abs(outs["full"] - outs["base"]).max() > 0
    assert np.abs(outs["zero"] - outs["base"]).max() <= 1  # weight 0: the base image (up to rounding)


def test_generate_rejects_a_folder_as_lora_and_names_the_files(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"")
    r = subprocess.run(
        [
            *ZLORA,
            "generate",
            "--model",
            "builtin:tiny",
            "--prompt",
            "x",
            "--lora",
            str(tmp_path),
            "--out",
            str(tmp_path / "o.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "is a folder" in r.stderr and "a.safetensors" in r.stderr


def test_make_tiny_writes_a_loadable_folder(tmp_path):
    r = subprocess.run([*ZLORA, "models", "make-tiny", str(tmp_path / "m")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m" / "transformer" / "config.json").is_file()


def test_missing_model_folder_component_is_named(make_config, tmp_path):
    from zlora.errors import UserError
    from zlora.models.load import resolve_model

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text("{}")
    try:
        resolve_model(str(tmp_path / "m"))
    except UserError as e:
        assert any("transformer/ has no config.json" in p for p in e.problems)
    else:
        raise AssertionError("expected a UserError")


def test_a_hub_model_complete_in_the_hf_cache_is_used_offline(tiny_dir, tmp_path):
    """A fabricated HF cache (refs/main -> snapshots/<commit>/) with HF_HUB_OFFLINE=1: no network is possible."""
    import os
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-zimage"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_dir, repo / "snapshots" / commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "o.png"
    r = subprocess.run(
        [
            *ZLORA,
            "generate",
            "--model",
            "acme/tiny-zimage",
            "--prompt",
            "x",
            "--steps",
            "2",
            "--width",
            "32",
            "--height",
            "32",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert Image.open(out).size == (32, 32)
    r = subprocess.run(
        [*ZLORA, "generate", "--model", "acme/other", "--prompt", "x", "--out", str(tmp_path / "p.png")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2 and "acme/other" in r.stderr and "Traceback" not in r.stderr
