"""Interruption tests through the real CLI in subprocesses: kill -9 and SIGINT, then resume by re-running."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from conftest import ZLORA

STEPS = 40


def _write_config(make_config, name: str) -> Path:
    data = make_config(
        {
            "train": {"steps": STEPS, "batch_size": 2},
            "job": {"name": name},
            "save": {"save_every": 5, "max_step_saves_to_keep": 3},
        },
        as_dict=True,
    )
    path = Path(data["job"]["output_dir"]).parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run_dir(cfg: Path) -> Path:
    data = yaml.safe_load(cfg.read_text())
    return Path(data["job"]["output_dir"]) / data["job"]["name"]


def _start(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*ZLORA, "train", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"training ended before the interruption point:\n{proc.stderr.read()[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail("timed out waiting for training progress")
        time.sleep(0.005)


def _tensors(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def reference_lora(tmp_path_factory, dataset_dir, tiny_dir) -> dict:
    """The LoRA of an uninterrupted run with the same settings (also through the CLI)."""
    import copy

    from conftest import BASE_CONFIG

    data = copy.deepcopy(BASE_CONFIG)
    out = tmp_path_factory.mktemp("ref")
    data["job"].update(output_dir=str(out / "out"), name="ref")
    data["datasets"][0]["folder_path"] = str(dataset_dir)
    data["train"].update(steps=STEPS, batch_size=2)
    data["save"].update(save_every=5, max_step_saves_to_keep=3)
    cfg = out / "ref.yaml"
    cfg.write_text(yaml.safe_dump(data))
    r = subprocess.run([*ZLORA, "train", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return _tensors(out / "out" / "ref" / "ref.safetensors")


def _assert_equal(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


def test_kill_9_then_rerun_ends_with_the_same_lora_as_an_uninterrupted_run(make_config, reference_lora):
    cfg = _write_config(make_config, "killed")
    run = _run_dir(cfg)
    proc = _start(cfg)
    _wait_for(lambda: (run / "checkpoints" / "step-000010").is_dir(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "killed.safetensors").exists(), "the run must have been killed before it finished"

    r = subprocess.run([*ZLORA, "train", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stderr
    _assert_equal(_tensors(run / "killed.safetensors"), reference_lora)
    steps = [
        int(x.split('"step": ')[1].split(",")[0]) for x in (run / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, STEPS + 1)), (
        "steps logged after the last checkpoint were redone, not duplicated"
    )


def _interrupt(make_config, name: str, sig: signal.Signals, after_steps: int) -> tuple[Path, Path]:
    """Start a run, send ``sig`` once ``after_steps`` steps are logged, and check the emergency checkpoint."""
    cfg = _write_config(make_config, name)
    run = _run_dir(cfg)
    proc = _start(cfg)
    metrics = run / "metrics.jsonl"
    _wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= after_steps, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in err
    assert "Run the same command again to resume" in err
    logged = len(metrics.read_text().splitlines())
    assert logged < STEPS
    assert (run / "checkpoints" / f"step-{logged:06d}" / "state.pt").is_file(), (
        "emergency checkpoint at the last step"
    )
    return cfg, run


def test_sigint_finishes_the_step_writes_a_checkpoint_and_says_how_to_resume(make_config, reference_lora):
    cfg, run = _interrupt(make_config, "ctrlc", signal.SIGINT, after_steps=3)
    r = subprocess.run([*ZLORA, "train", str(cfg)], capture_output=True, text=True, env={**os.environ})
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_equal(_tensors(run / "ctrlc.safetensors"), reference_lora)


def test_sigterm_also_writes_a_checkpoint_and_exits_with_143(make_config):
    _interrupt(make_config, "term", signal.SIGTERM, after_steps=2)
