"""The New Training Job form's server side without a browser: the settings a duplicated job or an applied YAML
keeps (only what its defaults would not give, so the architecture and the preset move what came from them), the
guide's starting values and the machine's say in them, the pre-flight check `zlora train` and the form share, job
edits, the job page's phase and ETA, and a panel for every config setting."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from conftest import REPO
from zlora.config import dump_config, parse_config
from zlora.config.presets import new_job_defaults
from zlora.runfolder import RunFolder
from zlora.train import preflight
from zlora.ui import form, progress
from zlora.ui.app import create_app
from zlora.utils.machine import Machine

SHAPES = str(REPO / "examples" / "shapes")
CPU = Machine()
GPU16 = Machine(cuda=[{"name": "a 16 GB card", "memory_gib": 16.0}])


def _full(data: dict, tmp_path: Path, machine=CPU, baseline=False) -> dict:
    cfg, problems = form.resolve(data, tmp_path, machine, baseline)
    assert not problems, problems
    return cfg.model_dump(mode="json")


def test_a_duplicated_job_keeps_its_choices_and_follows_a_new_architecture_and_preset(tmp_path):
    turbo = {"job": {"name": "a"}, "model": {"arch": "zimage:turbo"}, "datasets": [{"folder_path": SHAPES}]}
    written = yaml.safe_load(dump_config(parse_config(form.with_ui_defaults(turbo, tmp_path))))
    assert written["model"]["assistant_lora_path"].endswith("v2.safetensors")  # the full file has every value
    mine = form.user_settings(written, tmp_path, CPU)
    assert _full(mine, tmp_path) == _full(written, tmp_path)  # nothing changes by dropping the defaults
    assert mine["model"] == {"arch": "zimage:turbo"} and "sample" not in mine
    mine["model"]["arch"] = "zimage:deturbo"  # what the form's select does
    deturbo = _full(mine, tmp_path)
    assert deturbo["model"]["name_or_path"] == "ostris/Z-Image-De-Turbo"
    assert deturbo["model"]["assistant_lora_path"] is None
    assert (deturbo["sample"]["sample_steps"], deturbo["sample"]["guidance_scale"]) == (25, 3.0)
    # a value set on purpose stays: 12 preview steps, no adapter (null), the attn preset's module list
    chosen = {
        **turbo,
        "model": {"arch": "zimage:turbo", "assistant_lora_path": None},
        "sample": {"sample_steps": 12},
    }
    mine = form.user_settings(_full(chosen, tmp_path), tmp_path, CPU)
    assert mine["model"] == {"arch": "zimage:turbo", "assistant_lora_path": None}
    mine["model"]["arch"] = "zimage"
    base = _full(mine, tmp_path)
    assert base["sample"]["sample_steps"] == 12 and base["model"]["assistant_lora_path"] is None
    attn = _full({**turbo, "network": {"preset": "attn"}}, tmp_path)
    mine = form.user_settings(attn, tmp_path, CPU)
    assert "target_modules" not in mine.get("network", {})
    mine["network"]["preset"] = "attn_ff_adaln"
    assert "adaLN_modulation.0" in _full(mine, tmp_path)["network"]["target_modules"]


def test_the_guides_starting_values_the_machines_say_and_a_set_field_wins(tmp_path):
    draft = {"datasets": [{"folder_path": SHAPES}, {"folder_path": SHAPES, "resolution": [256]}]}
    cpu = _full(draft, tmp_path, CPU, baseline=True)
    assert (
        cpu["model"]["arch"] == "zimage:turbo" and cpu["model"]["name_or_path"] == "Tongyi-MAI/Z-Image-Turbo"
    )
    assert cpu["model"]["assistant_lora_path"].endswith("zimage_turbo_training_adapter_v2.safetensors")
    t = cpu["train"]
    assert (t["steps"], t["lr"], t["optimizer"], t["timestep_type"], t["cache_text_embeddings"]) == (
        2500,
        1e-4,
        "adamw8bit",  # the guide's AdamW8Bit: bitsandbytes runs it on the CPU too
        "weighted",
        True,
    )
    assert cpu["network"]["linear"] == 16 and cpu["model"]["quantize"] is False
    assert [d["resolution"] for d in cpu["datasets"]] == [[512, 768, 1024], [256]]
    assert all(d["cache_latents"] for d in cpu["datasets"])
    s = cpu["sample"]
    assert (s["width"], s["height"], s["sample_every"], s["sample_steps"], s["guidance_scale"]) == (
        1024,
        1024,
        250,
        9,
        0.0,
    )
    gpu = _full(draft, tmp_path, GPU16, baseline=True)
    assert gpu["train"]["optimizer"] == "adamw8bit"
    assert (gpu["model"]["quantize"], gpu["model"]["qtype"], gpu["model"]["quantize_te"]) == (
        True,
        "float8",
        True,
    )
    big = new_job_defaults(None, 80.0)
    assert "model.quantize" not in big and big["train.optimizer"] == "adamw8bit"
    assert "model.low_vram" not in new_job_defaults(None, 16.0)
    assert new_job_defaults(None, 12.0)["model.low_vram"] is True  # 8-12 GB: blocks swapped (auto)
    shapes = _full({**draft, "model": {"name_or_path": "builtin:shapes"}}, tmp_path, GPU16, baseline=True)
    assert (shapes["train"]["steps"], shapes["sample"]["width"], shapes["datasets"][0]["resolution"]) == (
        400,
        64,
        [64],
    )
    assert new_job_defaults("builtin:tiny", 16.0) == {}
    mine = {**draft, "train": {"steps": 300, "optimizer": "lion"}, "model": {"assistant_lora_path": None}}
    set_ = _full(mine, tmp_path, GPU16, baseline=True)
    assert (set_["train"]["steps"], set_["train"]["optimizer"], set_["model"]["assistant_lora_path"]) == (
        300,
        "lion",
        None,
    )


def test_preflight_names_the_field_of_everything_train_would_refuse_before_its_first_step(
    tmp_path, tiny_dir, monkeypatch
):
    monkeypatch.setattr(Machine, "installed", staticmethod(lambda package: package != "bitsandbytes"))
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = parse_config(
        {
            "job": {"name": "p", "output_dir": str(tmp_path / "out"), "device": "cuda:1"},
            "model": {"name_or_path": "org/not-pulled", "assistant_lora_path": "org/adapter/a.safetensors"},
            "train": {"optimizer": "adamw8bit"},
            "hub": {"models_dir": str(tmp_path / "models"), "offline": True},
            "datasets": [{"folder_path": str(empty)}, {"folder_path": str(tmp_path / "missing")}],
        }
    )
    found = dict(preflight.problems(cfg, CPU))
    assert set(found) == {
        "job.device",
        "train.optimizer",
        "datasets[1].folder_path",
        "model.name_or_path",
        "model.assistant_lora_path",
    }, found
    assert "no CUDA device" in found["job.device"]
    assert "adamw8bit needs the bitsandbytes package: pip install bitsandbytes" in found["train.optimizer"]
    assert "zlora models pull org/not-pulled" in found["model.name_or_path"]
    # with every folder there, each must hold images; a GPU machine runs the 8-bit optimizer on cuda:0 only
    cfg = cfg.model_copy(update={"datasets": cfg.datasets[:1]})
    found = dict(preflight.problems(cfg, Machine(cuda=[{"name": "x", "memory_gib": 80}])))
    assert "has no images" in found["datasets[0].folder_path"] and "1 CUDA device" in found["job.device"]
    assert "train.optimizer" not in found or "bitsandbytes package" in found["train.optimizer"]
    good = parse_config(
        {
            "job": {"name": "g", "output_dir": str(tmp_path / "out"), "device": "cpu"},
            "model": {"name_or_path": str(tiny_dir)},
            "datasets": [{"folder_path": SHAPES}],
        }
    )
    assert preflight.problems(good, CPU) == []
    (tmp_path / "out" / "g").mkdir(parents=True)
    (tmp_path / "out" / "g" / "mine.txt").write_text("a file of the user's")
    assert "job.name" in dict(preflight.problems(good, CPU))


@pytest.fixture
def client(tmp_path):
    return TestClient(create_app(tmp_path / "ui", start_runner=False, machine=CPU))


def _job_yaml(name="e", **train) -> str:
    return json.dumps(
        {
            "job": {"name": name, "device": "cpu"},
            "model": {"name_or_path": "builtin:tiny", "dtype": "fp32"},
            "network": {"linear": 4, "linear_alpha": 4},
            "train": {"steps": 4, **train},
            "datasets": [{"folder_path": SHAPES, "resolution": [64]}],
        }
    )


def test_the_form_and_job_creation_check_the_machine_and_edits_keep_the_run(client, tmp_path):
    body = {"config": json.loads(_job_yaml()), "check_environment": True}
    body["config"]["job"]["device"] = "cuda"
    r = client.post("/api/config/resolve", json=body).json()
    assert [e["loc"] for e in r["errors"]] == ["job.device"] and r[
        "config"
    ] is not None  # the form still shows it
    r = client.post("/api/jobs", json={"config_yaml": json.dumps(body["config"])})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == "job.device"
    assert client.get("/api/jobs").json() == []  # nothing queued that would fail at start-up
    # a bad value blanks only itself: the rest of the form still resolves
    broken = json.loads(_job_yaml())
    broken["train"]["lr"] = -1
    r = client.post("/api/config/resolve", json={"config": broken}).json()
    assert r["valid"] is False and r["config"]["train"]["steps"] == 4 and r["errors"][0]["loc"] == "train.lr"

    job = client.post("/api/jobs", json={"config_yaml": _job_yaml(), "start": False}).json()["id"]
    edited = json.loads(_job_yaml())
    edited["network"]["linear"] = 8
    r = client.put(f"/api/jobs/{job}/config", json={"config_yaml": json.dumps(edited), "start": False})
    assert r.status_code == 200, r.text
    assert yaml.safe_load(client.get(f"/api/jobs/{job}").json()["config_yaml"])["network"]["linear"] == 8
    renamed = {**edited, "job": {"name": "other", "device": "cpu"}}
    r = client.put(f"/api/jobs/{job}/config", json={"config_yaml": json.dumps(renamed)})
    assert r.status_code == 422 and "Duplicate" in r.json()["detail"][0]["msg"]
    run = RunFolder.at(client.get(f"/api/jobs/{job}").json()["run_dir"], "e")
    (run.checkpoints / "step-000002").mkdir(parents=True)
    r = client.put(f"/api/jobs/{job}/config", json={"config_yaml": json.dumps(edited)})
    assert r.status_code == 409 and "has checkpoints" in r.json()["detail"]


def test_applied_yaml_keeps_what_the_user_chose(client):
    text = dump_config(parse_config(json.loads(_job_yaml("y", lr=3e-4))))
    mine = client.post("/api/config/parse", json={"yaml": text}).json()["config"]
    assert mine["train"] == {"steps": 4, "lr": 3e-4} and "sample" not in mine and "save" not in mine


def test_the_job_page_phase_and_no_eta_when_not_training(tmp_path):
    run = RunFolder.of(tmp_path, "j")
    run.root.mkdir()
    run.metrics.write_text(
        "".join(json.dumps({"step": i, "loss": 0.1, "seconds": 2.0}) + "\n" for i in (1, 2))
    )
    old = time.time() - 100
    os.utime(run.metrics, (old, old))
    started = time.time() - 10  # a resume started after the last line was written: its numbers are old
    assert progress.progress(run, 10, "running", started)["phase"] == "starting"
    assert progress.progress(run, 10, "running", started)["eta_s"] is None
    run.metrics.write_text(
        run.metrics.read_text() + json.dumps({"step": 3, "loss": 0.1, "seconds": 2.0}) + "\n"
    )
    now = progress.progress(run, 10, "running", started)
    assert now["phase"] == "training" and now["eta_s"] == pytest.approx(14.0)
    stopped = progress.progress(run, 10, "stopped", started)
    assert stopped["eta_s"] is None and stopped["phase"] is None and stopped["step"] == 3


def _schema_leaves(model, prefix="") -> set[str]:
    from pydantic import BaseModel

    out = set()
    for name, f in model.model_fields.items():
        ann = f.annotation
        inner = getattr(ann, "__args__", (ann,))
        sub = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
        if name in ("datasets", "network", "ema_config") or (sub and name != "prompts"):
            continue
        out.add(prefix + name)
    return out


def test_every_config_setting_is_on_a_panel_with_a_label():
    from zlora.config.dataset import ValidationConfig
    from zlora.config.network import NETWORK_TYPES
    from zlora.config.schema import (
        DatasetConfig,
        EmaConfig,
        HubConfig,
        JobConfig,
        ModelConfig,
        SampleConfig,
        SaveConfig,
        TrainConfig,
    )

    settings = set()
    for section, model in [
        ("job", JobConfig),
        ("hub", HubConfig),
        ("model", ModelConfig),
        ("save", SaveConfig),
        ("train", TrainConfig),
        ("sample", SampleConfig),
        *(("network", cls) for cls in NETWORK_TYPES.values()),
        ("validation", ValidationConfig),  # its datasets (a list like `datasets`): in the YAML editor
    ]:
        settings |= _schema_leaves(model, f"{section}.")
    settings |= _schema_leaves(EmaConfig, "train.ema_config.")
    on_panels = {f["path"] for p in form.PANELS if not p.get("list") for f in p["fields"] + p["more"]}
    assert settings - on_panels == set(), "settings the form cannot reach"
    assert on_panels - settings == set(), "panel fields that are not settings"
    dataset = {f["path"] for p in form.PANELS if p.get("list") for f in p["fields"] + p["more"]}
    assert dataset == _schema_leaves(DatasetConfig)
    assert all(f["label"] for p in form.PANELS for f in p["fields"] + p["more"])
