"""The speed options on CPU: `zlora bench --size tiny` runs the trainer's step and the bare floor and reports them;
`train.compile` never ends a run (a failing compile trains eager); metrics carry s/step and peak memory."""

from __future__ import annotations

import json
import subprocess

from conftest import ZLORA
from zlora.train.trainer import run_training


def test_bench_tiny_on_cpu_reports_trainer_floor_and_memory(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([*ZLORA, "bench", "--size", "tiny", "--device", "cpu", "--res", "32", "--steps", "3",
                        "--warmup", "1", "--set", "train.gradient_checkpointing=false", "--json", str(out)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "trainer step:" in r.stdout and "bare floor:" in r.stdout and "MFU" in r.stdout
    data = json.loads(out.read_text())
    for key in (
        "trainer_s_per_step",
        "floor_s_per_step",
        "ratio",
        "peak_mem_gib",
        "weights_gib",
        "device",
        "options",
    ):
        assert key in data
    assert data["trainer_s_per_step"] > 0 and data["floor_s_per_step"] > 0 and data["device"] == "cpu"
    assert data["options"] == ["train.gradient_checkpointing=false"]
    r = subprocess.run([*ZLORA, "bench", "--res", "33"], capture_output=True, text=True)
    assert r.returncode == 2 and "--res" in r.stderr


def test_a_failing_compile_trains_eager_and_metrics_have_speed_and_memory(make_config, monkeypatch, caplog):
    from diffusers import ZImageTransformer2DModel

    def broken(self, **kw):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(ZImageTransformer2DModel, "compile_repeated_blocks", broken)
    cfg = make_config({"train": {"steps": 2, "compile": True}})
    lora = run_training(cfg)
    assert (
        lora.is_file() and "could not compile (RuntimeError: no compiler here); training eager" in caplog.text
    )
    rows = [json.loads(x) for x in (lora.parent / "metrics.jsonl").read_text().splitlines()]
    assert all(r["seconds"] > 0 and r["mem_gib"] > 0 for r in rows)
