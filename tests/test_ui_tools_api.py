"""Web UI part 2 through its HTTP API: datasets (create, upload checked by content, per-image buckets and problems,
captions edited one by one and in bulk), LoRA tools over `zlora lora` (upload, inspect with the per-block table,
scale, merge, convert: each result a new file, inputs untouched)."""

from __future__ import annotations

import hashlib
import io

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from uiserver import UIServer, multipart

from zlora.lora.codecs import write_modules
from zlora.lora.modules import LoraModule


@pytest.fixture
def server(tmp_path):
    s = UIServer(tmp_path / "ui").start()
    yield s
    s.kill()


def _png(w: int, h: int, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def test_datasets_upload_inspect_and_edit_captions(server, tmp_path):
    assert server.call("POST", "/api/datasets", {"name": "faces"})[0] == 200
    assert server.call("POST", "/api/datasets", {"name": "faces"})[0] == 409
    assert server.call("POST", "/api/datasets", {"name": "../evil"})[0] == 422
    body, ctype = multipart(
        "files",
        [
            ("a.png", _png(640, 640)),
            ("a.txt", b"a red square"),
            ("../../b.png", _png(300, 200)),
            ("c.jpg", b"not an image"),
            ("d.pt", b"\x80\x04pickle"),
            ("wide.png", _png(1024, 512)),
        ],
    )
    status, r = server.call("POST", "/api/datasets/faces/files", raw=body, ctype=ctype)
    assert status == 200, r
    assert sorted(r["kept"]) == ["a.png", "a.txt", "b.png", "wide.png"]  # path parts dropped from ../../b.png
    why = {x["file"]: x["why"] for x in r["refused"]}
    assert "not a readable image" in why["c.jpg"] and "only images" in why["d.pt"]
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "ui" / "b.png").exists()
    status, ds = server.call("GET", "/api/datasets/faces?resolutions=512,1024")
    by = {i["name"]: i for i in ds["images"]}
    assert by["a.png"]["caption"] == "a red square" and by["a.png"]["buckets"]["512"] == [512, 512]
    assert (
        by["a.png"]["buckets"]["1024"] is None and "too small for resolution 1024" in by["a.png"]["problem"]
    )
    assert by["wide.png"]["buckets"]["512"][0] > by["wide.png"]["buckets"]["512"][1]
    assert by["b.png"]["caption"] is None
    assert server.call("PUT", "/api/datasets/faces/captions/b.png", {"text": "a small red square"})[0] == 200
    assert (
        server.call("POST", "/api/datasets/faces/captions", {"action": "insert_trigger"})[1]["changed"] == 3
    )
    assert (
        server.call(
            "POST", "/api/datasets/faces/captions", {"action": "replace", "find": "red", "text": "blue"}
        )[1]["changed"]
        == 2
    )
    caps = {i["name"]: i["caption"] for i in server.call("GET", "/api/datasets/faces")[1]["images"]}
    assert caps == {
        "a.png": "[trigger], a blue square",
        "b.png": "[trigger], a small blue square",
        "wide.png": "[trigger]",
    }
    assert server.call("GET", "/api/datasets/faces/image/..%2F..%2Fzlora.db")[0] in (403, 404)
    assert server.call("GET", "/api/datasets/faces/image/a.png")[0] == 200
    # an existing folder, used in place
    outside = tmp_path / "mine"
    outside.mkdir()
    (outside / "x.png").write_bytes(_png(64, 64))
    assert server.call("POST", "/api/datasets", {"name": "mine", "path": str(outside)})[0] == 200
    listed = {d["name"]: d for d in server.call("GET", "/api/datasets")[1]}
    assert listed["mine"]["images"] == 1 and not listed["mine"]["managed"] and listed["faces"]["images"] == 3


def _lora_file(path, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    modules = {
        f"layers.{i}.attention.to_{c}": LoraModule(
            torch.randn(4, 64, generator=g), torch.randn(64, 4, generator=g), 2.0
        )
        for i in range(2)
        for c in ("q", "k", "v")
    }
    save_file(write_modules(modules, "zlora"), str(path))


def test_lora_tools_make_new_files_and_never_touch_inputs(server, tmp_path):
    src = tmp_path / "mine.safetensors"
    _lora_file(src, 0)
    _lora_file(tmp_path / "other.safetensors", 1)
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    refs = []
    for p in (src, tmp_path / "other.safetensors"):
        body, ctype = multipart("file", [(p.name, p.read_bytes())])
        status, r = server.call("POST", "/api/lora/upload", raw=body, ctype=ctype)
        assert status == 200, r
        refs.append(r["lora"])
    body, ctype = multipart("file", [("evil.ckpt", b"\x80\x04")])
    assert server.call("POST", "/api/lora/upload", raw=body, ctype=ctype)[0] == 422
    body, ctype = multipart("file", [("broken.safetensors", b"\x00" * 5)])
    status, r = server.call("POST", "/api/lora/upload", raw=body, ctype=ctype)
    assert status == 400 and "only 5 bytes" in r["detail"]

    status, r = server.call("POST", "/api/lora/inspect", {"lora": refs[0]})
    assert status == 200 and r["format"] == "zlora"
    assert set(r["table"]) == {"layers.0", "layers.1"} and set(r["table"]["layers.0"]) == {"q", "k", "v"}
    status, scaled = server.call(
        "POST", "/api/lora/scale", {"lora": refs[0], "components": {"qk": 0.0}, "layers": "1:2"}
    )
    assert status == 200, scaled
    table = server.call("POST", "/api/lora/inspect", {"lora": scaled["lora"]})[1]["table"]
    assert table["layers.0"]["q"] == 0 and table["layers.1"]["v"] == pytest.approx(
        2 * r["table"]["layers.1"]["v"], rel=1e-5
    )
    status, merged = server.call(
        "POST",
        "/api/lora/merge",
        {"inputs": [{"lora": refs[0], "weight": 0.5}, {"lora": refs[1], "weight": 0.5}], "rank": 4},
    )
    assert status == 200 and "kept energy" in merged["report"]
    status, conv = server.call("POST", "/api/lora/convert", {"lora": refs[0], "to": "comfy"})
    assert status == 200 and conv["report"] == "zlora -> comfy-fused"
    assert server.call("GET", conv["url"])[0] == 200
    assert (
        server.call("POST", "/api/lora/scale", {"lora": refs[0], "layers": "40:1"})[0] == 400
    )  # names the layers
    assert server.call("POST", "/api/lora/convert", {"lora": "file:../zlora.db", "to": "kohya"})[0] == 404
    assert server.call("POST", "/api/lora/convert", {"lora": refs[0], "to": "sdxl"})[0] == 400
    names = {x["name"] for x in server.call("GET", "/api/loras")[1]}
    assert len(names) == 5  # 2 uploads + scale, merge, convert results
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before


def _wait_task(server, task_id: int, timeout: float = 120) -> dict:
    import time

    end = time.monotonic() + timeout
    while True:
        task = server.call("GET", f"/api/tasks/{task_id}")[1]
        if task["status"] not in ("running", "queued"):
            return task
        assert time.monotonic() < end, task
        time.sleep(0.2)


def test_models_pull_with_progress_verify_and_the_endpoint_setting(tmp_path, tiny_dir):
    import os

    from hubserver import FakeHub

    hub = FakeHub()
    hub.add_repo("org/tiny-zimage", tiny_dir)
    url = hub.start()
    server = UIServer(tmp_path / "ui", env={**os.environ, "HF_HUB_OFFLINE": "0"}).start()
    try:
        assert server.call("PUT", "/api/settings", {"endpoint": "htp:/x"})[0] == 422
        s = server.call("PUT", "/api/settings", {"endpoint": url, "models_dir": str(tmp_path / "models")})[1]
        assert s["effective_endpoint"] == url
        task_id = server.call("POST", "/api/models/pull", {"ref": "org/tiny-zimage"})[1]["id"]
        task = _wait_task(server, task_id)
        assert task["status"] == "done", task
        assert task["total"] > 0 and task["bytes"] == task["total"]
        models = server.call("GET", "/api/models")[1]
        assert any(m["name"] == "org/tiny-zimage" and m["complete"] == "yes" for m in models)
        task = _wait_task(
            server, server.call("POST", "/api/models/verify", {"ref": "org/tiny-zimage"})[1]["id"]
        )
        assert task["status"] == "done" and "all files match" in task["log"]
        task = _wait_task(server, server.call("POST", "/api/models/pull", {"ref": "org/nope"})[1]["id"])
        assert task["status"] == "failed" and "org/nope" in task["message"]
        assert server.call("POST", "/api/models/pull", {"ref": "x"})[0] == 422
    finally:
        server.kill()
        hub.stop()


def test_generate_task_embeds_its_settings(server, tmp_path):
    from PIL import Image

    body = {
        "model": "builtin:tiny",
        "prompt": "a red circle",
        "steps": 2,
        "width": 32,
        "height": 32,
        "seed": 7,
        "device": "cpu",
    }
    task = _wait_task(server, server.call("POST", "/api/generate", body)[1]["id"])
    assert task["status"] == "done", task
    status, _ = server.call("GET", task["image"])
    assert status == 200
    png = Image.open(tmp_path / "ui" / "images" / f"task-{task['id']}.png")
    assert png.size == (32, 32) and '"seed": 7' in png.text["parameters"]
    assert server.call("POST", "/api/generate", {**body, "width": 33})[0] == 422
    bad = _wait_task(server, server.call("POST", "/api/generate", {**body, "model": "./nope"})[1]["id"])
    assert bad["status"] == "failed" and "folder not found" in bad["message"]
    # left out, steps/guidance/size are the model's own (builtin:shapes: 64 px, 20 steps, guidance 1)
    task = _wait_task(
        server,
        server.call(
            "POST", "/api/generate", {"prompt": "a red circle on a blue background", "device": "cpu"}
        )[1]["id"],
    )
    assert task["status"] == "done", task
    assert {k: task["args"][k] for k in ("model", "steps", "guidance", "width", "height")} == {
        "model": "builtin:shapes",
        "steps": 20,
        "guidance": 1.0,
        "width": 64,
        "height": 64,
    }


def test_lora_tools_take_a_dora_file_with_the_base_model_it_names(server, tmp_path, tiny_dir):
    """A DoRA delta needs the base weights: the tools page reads them from the model the file names; a file whose
    model is not here is inspected without the table and refused by scale with the reason (400, not 500)."""
    from zlora.lora.bake import model_shapes
    from zlora.lora.modules import DoraModule

    g = torch.Generator().manual_seed(0)
    modules = {}
    for name in ("layers.0.attention.to_q", "layers.1.attention.to_v"):
        out, n_in = model_shapes(tiny_dir)[f"{name}.weight"]
        scale = 1 + 0.1 * torch.rand(out, 1, generator=g)
        modules[name] = DoraModule(
            torch.randn(2, n_in, generator=g), torch.randn(out, 2, generator=g), 2.0, scale
        )
    refs = {}
    for label, base in (("here", str(tiny_dir)), ("gone", str(tmp_path / "no-model"))):
        path = tmp_path / f"{label}.safetensors"
        save_file(write_modules(modules, "zlora"), str(path), {"base_model": base})
        body, ctype = multipart("file", [(path.name, path.read_bytes())])
        refs[label] = server.call("POST", "/api/lora/upload", raw=body, ctype=ctype)[1]["lora"]

    status, r = server.call("POST", "/api/lora/inspect", {"lora": refs["here"]})
    assert status == 200 and "type:     dora" in r["report"], r
    q = r["table"]["layers.0"]["q"]
    assert q > 0
    status, scaled = server.call("POST", "/api/lora/scale", {"lora": refs["here"], "ratio": 0.5})
    assert status == 200, scaled
    table = server.call("POST", "/api/lora/inspect", {"lora": scaled["lora"]})[1]["table"]
    assert table["layers.0"]["q"] == pytest.approx(0.5 * q, rel=1e-4)

    status, r = server.call("POST", "/api/lora/inspect", {"lora": refs["gone"]})
    assert status == 200 and r["table"] == {} and "pass --base MODEL" in r["report"]
    status, r = server.call("POST", "/api/lora/scale", {"lora": refs["gone"], "ratio": 0.5})
    assert status == 400 and "base model" in r["detail"], r
