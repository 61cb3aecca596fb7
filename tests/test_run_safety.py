"""A run folder always describes its LoRA: a resume with changed training settings is refused (or forced and
recorded), a failed start rewrites nothing, a full disk names the intact checkpoint, Ctrl-C at start-up aborts
cleanly, and what a config or dataset silently gets wrong is named."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ZLORA
from zlora.errors import UserError
from zlora.train.trainer import run_training


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _first_run(make_config):
    cfg = make_config({"train": {"steps": 2}, "save": {"save_every": 2}})
    run_training(cfg)
    return cfg, Path(cfg.job.output_dir) / cfg.job.name


def test_a_changed_training_setting_is_refused_and_nothing_is_rewritten(make_config):
    cfg, run_dir = _first_run(make_config)
    before = _snapshot(run_dir)
    changed = make_config(
        {
            "train": {"steps": 4, "lr": 2e-3, "optimizer": "lion"},
            "save": {"save_every": 2},
            "network": {"linear": 4, "linear_alpha": 2},
        }
    )
    with pytest.raises(UserError) as e:
        run_training(changed)
    text = "\n".join(e.value.problems)
    assert "train.lr: 0.001 -> 0.002" in text
    assert 'train.optimizer: "adamw" -> "lion"' in text
    assert "network.linear_alpha: 4.0 -> 2.0" in text
    assert "job.name" in text and "--force-resume" in text
    assert "train.steps" not in text  # raising the steps is allowed
    assert _snapshot(run_dir) == before


def test_raising_steps_resumes_and_keeps_the_earlier_config(make_config):
    cfg, run_dir = _first_run(make_config)
    old_config = (run_dir / "config.yaml").read_text()
    more = make_config({"train": {"steps": 3}, "save": {"save_every": 2}, "sample": {"sample_every": 7}})
    run_training(more)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["steps"] == 3
    assert (run_dir / "config.000002.yaml").read_text() == old_config
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_force_resume_applies_the_new_lr_and_is_recorded(make_config):
    from zlora.train.trainer import Trainer

    cfg, run_dir = _first_run(make_config)
    changed = make_config({"train": {"steps": 3, "lr": 5e-4}, "save": {"save_every": 2}})
    with pytest.raises(UserError):
        Trainer(changed).setup()
    trainer = Trainer(changed, force_resume=True)
    trainer.setup()
    try:
        assert trainer.step == 2
        assert [g["lr"] for g in trainer.state.optimizer.param_groups] == [5e-4]
        assert trainer.state.optimizer.state, "the optimizer moments were kept"
        trainer.train()
    finally:
        trainer.cleanup()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["forced_resumes"] == [{"step": 2, "changes": {"train.lr": {"old": 1e-3, "new": 5e-4}}}]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["lr"] == 5e-4


def test_force_resume_cannot_change_the_network(make_config):
    _, run_dir = _first_run(make_config)
    before = _snapshot(run_dir)
    with pytest.raises(UserError, match="cannot change the LoRA's shape"):
        run_training(make_config({"train": {"steps": 3}, "network": {"linear": 8, "linear_alpha": 8}}), True)
    assert _snapshot(run_dir) == before


def test_a_failed_start_leaves_the_run_folder_as_it_was(make_config, tmp_path):
    _, run_dir = _first_run(make_config)
    before = _snapshot(run_dir)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="no usable image"):
        run_training(
            make_config(
                {"train": {"steps": 3}, "datasets": [{"folder_path": str(broken), "resolution": 32}]},
            ),
            force_resume=True,
        )
    assert _snapshot(run_dir) == before


def test_disk_full_during_a_checkpoint_names_the_intact_one(make_config, monkeypatch):
    cfg = make_config({"train": {"steps": 4}, "save": {"save_every": 2}})
    real_save = torch.save
    calls = []

    def save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(UserError) as e:
        run_training(cfg)
    (line,) = e.value.problems
    assert line.startswith("disk full while writing") and "checkpoint step-000002 is intact" in line
    assert "run the same command again" in line
    ckpts = sorted(p.name for p in (Path(cfg.job.output_dir) / cfg.job.name / "checkpoints").iterdir())
    assert ckpts == ["step-000002"]  # no half checkpoint left behind


def test_a_caption_ext_typo_is_named(make_config, caplog):
    from zlora.config import parse_config
    from zlora.data.dataset import scan_dataset

    data = make_config(as_dict=True)
    data["datasets"][0]["caption_ext"] = "text"
    cfg = parse_config(data)
    with caplog.at_level(logging.WARNING):
        scan_dataset(cfg.datasets[0], 0, None)
    assert "0 of 4 images have a .text caption" in caplog.text
    assert "did you mean caption_ext: txt?" in caplog.text


def test_a_yaml_boolean_where_text_belongs_gets_a_hint(tmp_path):
    from zlora.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("job:\n  name: off\ndatasets:\n  - folder_path: .\n")
    with pytest.raises(UserError, match='quote the text, e.g. name: "off"'):
        load_config(path)
    path.write_text("job:\n  name: a\n  name: b\ndatasets:\n  - folder_path: .\n")
    with pytest.raises(UserError, match=r"key `name` appears twice \(lines 2 and 3\)"):
        load_config(path)


@pytest.mark.parametrize("delay", [0.3, 1.5])
def test_ctrl_c_during_start_up_aborts_without_a_traceback(make_config, delay):
    data = make_config({"train": {"steps": 400}}, as_dict=True)
    path = Path(data["job"]["output_dir"]).parent / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    # As from a terminal: SIGINT at its default, even when this suite runs in a background job (a shell starts
    # those with SIGINT ignored, and Python then installs no KeyboardInterrupt handler).
    proc = subprocess.Popen(
        [*ZLORA, "train", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err[-3000:]
    # 130, or killed by SIGINT (-2; a shell shows 130 for both). Seen once in about 10 fresh-clone runs, after the
    # CLI had printed "aborted": CPython re-raises SIGINT at exit when it marked a KeyboardInterrupt unhandled
    # (bpo-1054041), which probably happens when the signal lands in code a C extension runs through PyRun_* while
    # importing, even though the CLI catches it later. Not confirmed.
    assert proc.returncode in (130, -signal.SIGINT), err[-2000:]
    assert "aborted" in err or "Run the same command again to resume" in err


def test_the_same_run_twice_gives_the_same_lora_bytes_readable_by_others(make_config, tmp_path):
    import os

    old = os.umask(0o022)
    try:
        loras = [
            run_training(make_config({"job": {"output_dir": str(tmp_path / d)}})) for d in ("one", "two")
        ]
    finally:
        os.umask(old)
    first, second = (hashlib.sha256(p.read_bytes()).hexdigest() for p in loras)
    assert first == second
    run_dir = loras[0].parent
    for path in [
        loras[0],
        run_dir / "config.yaml",
        *run_dir.glob("checkpoints/*"),
        *run_dir.glob("checkpoints/*/*"),
    ]:
        assert path.stat().st_mode & 0o044 == 0o044, f"{path} is not readable by others"
