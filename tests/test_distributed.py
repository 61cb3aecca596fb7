"""Data-parallel training on CPU (gloo) under the real launcher: `torchrun --nproc_per_node 2 -m zlora train` with
batch_size 1 gives the LoRA of one process with batch_size 2; a kill -9 of the whole group after a checkpoint
resumes with the same command (or one process with the same global batch) and still matches; processes that
disagree on the config stop before step 1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from conftest import ZLORA

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _config(make_config, tmp_path: Path, name: str, batch: int, steps: int = 40, network=None) -> Path:
    data = make_config(
        {
            "job": {"name": name, "device": "cpu"},
            "train": {"steps": steps, "batch_size": batch, "gradient_accumulation": 2, "seed": 3},
            "save": {"save_every": 4, "max_step_saves_to_keep": 10},
            **({"network": network} if network else {}),
        },
        as_dict=True,
    )
    data["datasets"][0]["caption_dropout_rate"] = 0.25
    path = tmp_path / f"{name}-{batch}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _lora(cfg: Path) -> dict:
    data = yaml.safe_load(cfg.read_text())
    name = data["job"]["name"]
    return load_file(Path(data["job"]["output_dir"]) / name / f"{name}.safetensors")


def _close(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture
def reference(make_config, tmp_path):
    """One process, batch_size 2 (x accumulation 2), 40 steps."""
    cfg = _config(make_config, tmp_path, "one", 2)
    r = subprocess.run([*ZLORA, "train", str(cfg)], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    return _lora(cfg)


def test_two_processes_of_batch_1_train_the_lora_of_one_process_of_batch_2(make_config, tmp_path, reference):
    cfg = _config(make_config, tmp_path, "two", 1)
    r = subprocess.run([*TORCHRUN, "-m", "zlora", "train", str(cfg)], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _close(_lora(cfg), reference) <= 1e-5
    run = Path(yaml.safe_load(cfg.read_text())["job"]["output_dir"]) / "two"
    assert json.loads((run / "run.json").read_text())["processes"] == 2
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))  # one writer: each step once
    assert r.stdout.count("LoRA:") == 1


@pytest.mark.parametrize(
    "net, key",
    [
        ({"type": "lokr", "linear": 2, "linear_alpha": 4, "lokr_factor": 4}, ".lokr_w2_a"),
        ({"type": "dora", "linear": 4, "linear_alpha": 4}, ".dora_scale"),
    ],
)
def test_lokr_and_dora_train_the_same_on_two_processes(make_config, tmp_path, net, key):
    """LoKr and DoRA (its magnitudes too) through the same all-reduce: 2 processes x batch 1 = 1 process x
    batch 2."""
    one = _config(make_config, tmp_path, "n1", 2, steps=6, network=net)
    two = _config(make_config, tmp_path, "n2", 1, steps=6, network=net)
    r = subprocess.run([*ZLORA, "train", str(one)], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([*TORCHRUN, "-m", "zlora", "train", str(two)], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _lora(one), _lora(two)
    assert any(k.endswith(key) for k in a)
    assert _close(a, b) <= 1e-5


def test_kill_9_of_the_group_then_the_same_command_resumes_and_matches(make_config, tmp_path, reference):
    cfg = _config(make_config, tmp_path, "killed", 1)
    run = Path(yaml.safe_load(cfg.read_text())["job"]["output_dir"]) / "killed"
    proc = subprocess.Popen(
        [*TORCHRUN, "-m", "zlora", "train", str(cfg)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    end = time.monotonic() + 180
    while not (run / "checkpoints" / "step-000004" / "state.pt").is_file():
        assert proc.poll() is None and time.monotonic() < end, "no checkpoint before the launch ended"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers at once
    proc.wait()
    # The same command: resumes from the newest checkpoint and ends where the uninterrupted reference does.
    r = subprocess.run([*TORCHRUN, "-m", "zlora", "train", str(cfg)], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr
    assert _close(_lora(cfg), reference) <= 1e-5
    # One process with the same global batch (2 x 1) resumes the two-process run.
    more = tmp_path / "more.yaml"
    data = yaml.safe_load(cfg.read_text())
    data["train"].update(batch_size=2, steps=44)
    more.write_text(yaml.safe_dump(data))
    r = subprocess.run([*ZLORA, "train", str(more)], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and "resumed from" in r.stderr, r.stderr[-2000:]
    data["train"].update(batch_size=1, steps=48)  # a different global batch is named
    more.write_text(yaml.safe_dump(data))
    r = subprocess.run([*ZLORA, "train", str(more)], capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and "train.batch_size x processes: 2 -> 1" in r.stderr


def test_processes_that_disagree_on_the_config_stop_before_step_1(make_config, tmp_path):
    cfg = _config(make_config, tmp_path, "split", 1)
    script = tmp_path / "launch.py"
    script.write_text(
        "import os, sys\nfrom zlora.cli import main\n"
        f"lr = '1e-3' if os.environ['RANK'] == '0' else '2e-3'\nsys.exit(main(['train', {str(cfg)!r}, 'train.lr=' + lr]))\n"
    )
    r = subprocess.run([*TORCHRUN, str(script)], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode != 0
    assert "disagree on the config" in r.stderr
    assert not (
        Path(yaml.safe_load(cfg.read_text())["job"]["output_dir"]) / "split" / "metrics.jsonl"
    ).exists()
