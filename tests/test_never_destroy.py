"""Issue 23's corpus, as test_bad_input.py's: every command a user (or a typo) could give that used to end in a
traceback, a silent exit 0 with garbage, a misleading message, or a changed file. Each must now exit 2 with one
`zlora: error:` line naming the field or file and the fix, and leave every file of the workspace as it was."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from test_bad_input import _lora, _run, _snapshot

from conftest import REPO, ZLORA
from zlora.lora.codecs import write_modules
from zlora.lora.modules import LoraModule


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_dir, dataset_dir) -> Path:
    from diffusers import ZImageTransformer2DModel

    root = tmp_path_factory.mktemp("ws23")
    model = root / "model"
    shutil.copytree(tiny_dir, model)
    transformer = ZImageTransformer2DModel.from_pretrained(model, subfolder="transformer")
    good = _lora(transformer, 0)
    save_file(write_modules(good, "zlora"), str(root / "a.safetensors"))
    empty = {"layers.0.attention.to_q": LoraModule(torch.zeros(0, 64), torch.zeros(64, 0), 4.0)}
    save_file(write_modules(empty, "zlora"), str(root / "zero.safetensors"))
    nan = dict(good)
    name = next(iter(nan))
    nan[name] = LoraModule(nan[name].A, nan[name].B.clone().fill_(float("nan")), 2.0)
    save_file(write_modules(nan, "zlora"), str(root / "nan.safetensors"))
    wide = {"layers.0.attention.to_q": LoraModule(torch.randn(4, 128), torch.randn(128, 4), 4.0)}
    save_file(write_modules(wide, "zlora"), str(root / "wide.safetensors"))
    deep = {"layers.9.attention.to_q": LoraModule(torch.randn(4, 64), torch.randn(64, 4), 4.0)}
    save_file(write_modules(deep, "zlora"), str(root / "deep.safetensors"))
    data = root / "data"  # a dataset folder of the user's, with a file a pull would overwrite
    shutil.copytree(dataset_dir, data)
    (data / "model_index.json").write_text('{"mine": true}\n')
    (root / "plainfile").write_text("x")
    base = {
        "job": {"name": "j", "output_dir": str(root / "out"), "device": "cpu"},
        "model": {"name_or_path": "builtin:tiny"},
        "datasets": [{"folder_path": str(data), "resolution": 32}],
    }
    configs = {
        "device": {"job": {**base["job"], "device": "tpu:7"}},
        "steps": {"train": {"steps": 10**15}},
        "batch": {"train": {"batch_size": 10**9}},
        "rank": {"network": {"linear": 10**6}},
        "wide-rank": {"network": {"linear": 100}},  # the tiny model's modules are 64 wide
        "inside": {"job": {**base["job"], "output_dir": str(data)}},
    }
    for key, change in configs.items():
        (root / f"{key}.yaml").write_text(yaml.safe_dump({**base, **change}))
    (root / "backslash.yaml").write_text(
        'model:\n  name_or_path: "D:\\new\\tiny"\ndatasets: [{folder_path: x}]\n'
    )
    return root


CASES = [
    ("device-unknown", ["train", "{ws}/device.yaml"], "`job.device`: not a device; use auto, cpu, cuda"),
    ("steps-absurd", ["config", "validate", "{ws}/steps.yaml"], "`train.steps`: Input should be less than"),
    (
        "batch-absurd",
        ["config", "validate", "{ws}/batch.yaml"],
        "`train.batch_size`: Input should be less than",
    ),
    ("rank-absurd", ["config", "validate", "{ws}/rank.yaml"], "`network.linear`: Input should be less than"),
    (
        "rank-wider-than-the-modules",
        ["train", "{ws}/wide-rank.yaml"],
        "`network.linear` 100 is more than the width",
    ),
    ("output-inside-dataset", ["train", "{ws}/inside.yaml"], "inside `datasets[0].folder_path`"),
    ("yaml-backslash", ["config", "validate", "{ws}/backslash.yaml"], "write the path in single quotes"),
    ("inspect-zero-size", ["lora", "inspect", "{ws}/zero.safetensors"], "zero-size"),
    (
        "scale-zero-size",
        ["lora", "scale", "{ws}/zero.safetensors", "-o", "{ws}/new.safetensors"],
        "zero-size",
    ),
    (
        "resize-nan",
        ["lora", "resize", "{ws}/nan.safetensors", "-o", "{ws}/new.safetensors", "--rank", "2"],
        "NaN/inf",
    ),
    (
        "resize-above-rank",
        ["lora", "resize", "{ws}/a.safetensors", "-o", "{ws}/new.safetensors", "--rank", "8"],
        "already rank 4",
    ),
    (
        "generate-huge",
        ["generate", "--model", "{ws}/model", "--prompt", "x", "--width", "65536", "-o", "{ws}/new.png"],
        "--width 65536",
    ),
    (
        "generate-steps-absurd",
        ["generate", "--model", "{ws}/model", "--prompt", "x", "--steps", "100000000", "-o", "{ws}/new.png"],
        "must be 1 to 1000",
    ),
    (
        "generate-lora-other-width",
        [
            "generate",
            "--model",
            "{ws}/model",
            "--prompt",
            "x",
            "--lora",
            "{ws}/wide.safetensors",
            "-o",
            "{ws}/n.png",
        ],
        "another size of model",
    ),
    (
        "generate-lora-more-layers",
        [
            "generate",
            "--model",
            "{ws}/model",
            "--prompt",
            "x",
            "--lora",
            "{ws}/deep.safetensors",
            "-o",
            "{ws}/n.png",
        ],
        "match no weight of this model",
    ),
    (
        "generate-lora-inf-weight",
        [
            "generate",
            "--model",
            "{ws}/model",
            "--prompt",
            "x",
            "--lora",
            "{ws}/a.safetensors:inf",
            "-o",
            "{ws}/n.png",
        ],
        "finite number",
    ),
    (
        "generate-device-unknown",
        ["generate", "--model", "{ws}/model", "--prompt", "x", "--device", "tpu:7", "-o", "{ws}/n.png"],
        "`--device` 'tpu:7' is not a device",
    ),
    ("pull-traversal", ["models", "pull", "../../etc", "--models-dir", "{ws}/models"], "not a hub reference"),
    ("pull-space", ["models", "pull", "org/na me", "--models-dir", "{ws}/models"], "not a hub reference"),
    ("pull-into-dataset", ["models", "pull", "acme/x", "--to", "{ws}/data"], "other files (e.g."),
    ("ui-port", ["ui", "--port", "70000", "--data-dir", "{ws}/uidata"], "--port 70000: a port is 1 to 65535"),
    ("ui-data-dir-file", ["ui", "--data-dir", "{ws}/plainfile"], "--data-dir {ws}/plainfile is a file"),
    (
        "ui-host-garbage",
        ["ui", "--host", "not an address!", "--data-dir", "{ws}/uidata"],
        "is not an address",
    ),
]


@pytest.mark.parametrize("name,args,message", CASES, ids=[c[0] for c in CASES])
def test_each_case_is_one_line_exit_2_and_changes_nothing(name, args, message, ws, capsys):
    before = _snapshot(ws)
    code, err = _run([a.replace("{ws}", str(ws)) for a in args], capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("zlora: error:")]
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    assert len(lines) == 1 and message.replace("{ws}", str(ws)) in lines[0], err[-2000:]
    assert _snapshot(ws) == before, "a refused command modified files"
    assert "\t" not in lines[0], "the message carries a raw tab (a path read through YAML escapes)"


def test_a_mirror_that_answers_404_is_not_unreachable(ws):
    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):  # a mirror's plain 404, without the hub's X-Error-Code header
            self.send_response(404)
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"not found")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"
    }  # read once, when the hub client loads
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        cmd = [*ZLORA, "models", "pull", "acme/x", "--endpoint", endpoint, "--models-dir", str(ws / "m")]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    finally:
        server.shutdown()
    assert r.returncode == 2 and f"not found on {endpoint}: check the id" in r.stderr, r.stderr
    assert "cannot reach" not in r.stderr


def test_dangling_image_links_are_named_and_run_folders_are_never_training_images(
    make_config, tmp_path, caplog
):
    from zlora.data.dataset import list_images
    from zlora.train.trainer import run_training

    folder = tmp_path / "ds"
    shutil.copytree(make_config(as_dict=True)["datasets"][0]["folder_path"], folder)
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    cfg = make_config({"job": {"output_dir": str(tmp_path / "out")}})
    cfg.datasets[0].folder_path, cfg.datasets[0].include_subfolders = str(folder), True
    run = folder / "old_run"  # a run folder copied into a dataset: its previews are not images to train on
    run.mkdir()
    (run / "config.yaml").write_text("job: {name: old_run}\n")
    (run / "run.json").write_text("{}")
    (run / "samples").mkdir()
    shutil.copy(folder / "img0.png", run / "samples" / "step-000010.png")
    images = list_images(cfg.datasets[0])
    assert sorted(p.name for p in images) == [f"img{i}.png" for i in range(4)]
    assert "gone.png" in caplog.text and "point at nothing" in caplog.text
    assert run_training(cfg).is_file()


def test_a_second_trainer_on_one_run_folder_exits_2_naming_the_first_and_a_stale_lock_is_taken_over(
    make_config, tmp_path, caplog, monkeypatch
):
    from zlora.errors import UserError
    from zlora.train.runlock import RunLock
    from zlora.train.trainer import Trainer, run_training

    cfg = make_config({"train": {"steps": 2}})
    first = Trainer(cfg)
    first.setup()
    monkeypatch.setattr(RunLock, "GRACE_S", 0.2)
    try:
        with pytest.raises(UserError, match=rf"is being trained by process {os.getpid()} on "):
            Trainer(cfg).setup()
    finally:
        first.cleanup()
    # a holder killed with -9: the OS freed its lock, its note remains; the next trainer takes over and says so
    lock = RunLock(first.run)
    lock.info.write_text(json.dumps({"pid": 999999, "host": "gone"}))
    assert run_training(cfg).is_file()
    assert "took over the run folder lock of process 999999 on gone" in caplog.text
    assert not lock.info.exists() and not lock.path.exists()


def test_a_lock_freed_within_the_grace_is_taken_kill_then_rerun(tmp_path):
    """`kill -9` then the same command at once: the dying holder frees the lock a moment later; the new one waits."""
    import threading

    from zlora.runfolder import RunFolder
    from zlora.train.runlock import RunLock

    run = RunFolder(tmp_path, "j")
    first, second = RunLock(run), RunLock(run)
    first.acquire()
    threading.Timer(0.5, first.release).start()
    second.acquire()  # waits (GRACE_S 5 s) instead of refusing
    assert json.loads(second.info.read_text())["pid"] == os.getpid()
    second.release()
    assert not second.path.exists()


def test_a_second_zlora_train_process_is_refused_while_the_first_trains(make_config, tmp_path):
    data = make_config({"train": {"steps": 400}, "save": {"save_every": 1000}}, as_dict=True)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    first = subprocess.Popen([*ZLORA, "train", str(path)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        metrics = Path(data["job"]["output_dir"]) / "t" / "metrics.jsonl"
        end = time.monotonic() + 60
        while not (metrics.is_file() and metrics.read_text()) and time.monotonic() < end:
            time.sleep(0.1)
        second = subprocess.run(
            [*ZLORA, "train", str(path)], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 2 and f"is being trained by process {first.pid}" in second.stderr, (
            second.stderr
        )
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)


def test_a_diverged_run_exits_3_with_one_line_and_keeps_the_last_good_checkpoint(make_config, tmp_path):
    data = make_config(
        {"train": {"steps": 6, "lr": 1e30, "max_grad_norm": 0}, "save": {"save_every": 1}}, as_dict=True
    )
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    r = subprocess.run([*ZLORA, "train", str(path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    run = Path(data["job"]["output_dir"]) / "t"
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("zlora: error:")]
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(errors) == 1 and "the run diverged" in errors[0] and "step-000001, is kept" in errors[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001"]
    assert not (run / "t.safetensors").exists()


def test_repeated_sigterm_is_one_graceful_stop_and_sigterm_at_start_up_says_so(make_config, tmp_path):
    data = make_config({"train": {"steps": 2000}, "save": {"save_every": 1000}}, as_dict=True)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen([*ZLORA, "train", str(path)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    metrics = Path(data["job"]["output_dir"]) / "t" / "metrics.jsonl"
    end = time.monotonic() + 60
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3) and time.monotonic() < end:
        time.sleep(0.05)
    for _ in range(3):  # what a dying parent may deliver
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "checkpoint written to" in err, err[-2000:]
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert (metrics.parent / "checkpoints" / f"step-{steps[-1]:06d}").is_dir()  # at the current step

    early = subprocess.Popen([*ZLORA, "train", str(path)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # loading the config and the model, before any training
    early.send_signal(signal.SIGTERM)
    _, err = early.communicate(timeout=60)
    assert early.returncode == 143 and "Traceback" not in err and "zlora: terminated" in err, err[-2000:]


def test_generate_warns_when_builtin_shapes_is_asked_for_another_size(tmp_path):
    args = [
        "--width",
        "128",
        "--height",
        "128",
        "--steps",
        "2",
        "--device",
        "cpu",
        "-o",
        str(tmp_path / "x.png"),
    ]
    prompt = "a red circle on a blue background"
    cmd = [*ZLORA, "generate", "--model", "builtin:shapes", "--prompt", prompt, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "builtin:shapes learned 64x64 images; at 128x128" in r.stderr
