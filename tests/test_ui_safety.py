"""The web UI never destroys a user's files and no web page can drive it: Delete removes only the run folder a job
made, uploads never replace a file without being told, a caption write touches only its image's caption, another
site's page (by Host, Origin or Sec-Fetch-Site) is refused, child tasks queue within a bound, and a kill -9 of the
server ends the training child in a checkpoint at its current step."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image
from uiserver import UIServer, job_yaml, multipart


@pytest.fixture
def server(tmp_path):
    s = UIServer(tmp_path / "ui").start()
    yield s
    s.kill()


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def _png(colour) -> bytes:
    import io

    out = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(out, format="PNG")
    return out.getvalue()


def test_delete_removes_only_the_run_folder_the_job_made(server, tmp_path):
    out = tmp_path / "out"
    mine = out / "mine"  # a folder of the user's that happens to have the job's name
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    before = _files(out)
    text = job_yaml("mine", prompts=False).replace("job: {", f"job: {{output_dir: {out}, ")
    status, body = server.call("POST", "/api/jobs", {"config_yaml": text, "start": False})
    assert status == 409 and "is not a zlora run" in json.dumps(body), body
    assert _files(out) == before

    made = server.call("POST", "/api/jobs", {"config_yaml": text.replace("mine", "fresh"), "start": False})[
        1
    ]["id"]
    fresh = out / "fresh"
    assert (fresh / ".zlora-run.json").is_file()
    assert server.call("DELETE", f"/api/jobs/{made}")[1] == {"deleted": made, "kept": None}
    assert not fresh.exists() and _files(out) == before

    cli = out / "cli"  # a run of the CLI's with the job's name: the job resumes it, Delete leaves it
    cli.mkdir()
    (cli / ".zlora-run.json").write_text(json.dumps({"job": "cli", "created_by": "zlora train"}))
    (cli / "cli.safetensors").write_bytes(b"a LoRA the user trained")
    kept = _files(cli)
    job = server.call("POST", "/api/jobs", {"config_yaml": text.replace("mine", "cli"), "start": False})[1][
        "id"
    ]
    status, body = server.call("DELETE", f"/api/jobs/{job}")
    assert status == 200 and "existed before" in body["kept"]
    assert _files(cli) == kept


def test_uploads_never_replace_a_file_and_captions_only_touch_their_image(server, tmp_path):
    folder = tmp_path / "in_place"
    folder.mkdir()
    (folder / "img_000.png").write_bytes(_png((200, 0, 0)))
    (folder / "notes.txt").write_text("the user's notes")
    (folder / "notes.md").write_text("# more notes")
    before = _files(folder)
    assert server.call("POST", "/api/datasets", {"name": "mine", "path": str(folder)})[0] == 200
    body, ctype = multipart("files", [("img_000.png", _png((0, 0, 200))), ("notes.txt", b"other")])
    status, reply = server.call("POST", "/api/datasets/mine/files", raw=body, ctype=ctype)
    assert status == 409 and {r["file"] for r in reply["detail"]} == {"img_000.png", "notes.txt"}
    assert _files(folder) == before

    status, _ = server.call("PUT", "/api/datasets/mine/captions/notes.md", {"text": "overwritten?"})
    assert status == 404 and _files(folder) == before
    status, _ = server.call("PUT", "/api/datasets/mine/captions/img_000.png", {"text": "a red square"})
    assert status == 200 and (folder / "img_000.txt").read_text() == "a red square\n"
    assert (folder / "notes.txt").read_text() == "the user's notes"

    body, ctype = multipart("files", [("img_000.png", _png((0, 0, 200)))])
    end = b"--zloraTestBoundary7MA4YWxkTrZu0gW--"
    field = b'Content-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n'
    raw = body.replace(end, end[:-2] + b"\r\n" + field + end)
    status, reply = server.call("POST", "/api/datasets/mine/files", raw=raw, ctype=ctype)
    assert status == 200 and reply["kept"] == ["img_000.png"]  # asked for: replaced
    assert Image.open(folder / "img_000.png").getpixel((0, 0)) == (0, 0, 200)


def test_another_sites_page_cannot_read_or_drive_the_ui(server):
    port = server.port
    status, body = server.call("GET", "/api/jobs", headers={"Host": f"rebind.attacker.example:{port}"})
    assert status == 403 and "not a name of this server" in body["detail"]
    other_sites = [
        {"Origin": "http://attacker.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": f"http://localhost:{port + 1}"},  # another local server's page
        {"Sec-Fetch-Site": "same-site"},
    ]
    for headers in other_sites:
        status, body = server.call("POST", "/api/datasets", {"name": "x"}, headers=headers)
        assert status == 403, headers
    assert server.call("GET", "/api/datasets")[1] == []  # nothing was made
    ok = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}
    assert server.call("POST", "/api/datasets", {"name": "x"}, headers=ok)[0] == 200
    assert server.call("GET", "/api/jobs", headers={"Host": f"localhost:{port}"})[0] == 200


def test_a_token_still_guards_with_the_host_check(tmp_path):
    server = UIServer(tmp_path / "ui", token="s3cret").start()
    try:
        assert server.call("GET", "/api/jobs")[0] == 200
        assert server.call("GET", "/api/jobs", headers={"Host": "evil.example"})[0] == 403
        server.token = None
        assert server.call("GET", "/api/jobs")[0] == 401
    finally:
        server.kill()


def test_a_burst_of_generate_requests_runs_one_child_at_a_time(server):
    body = {"model": "builtin:tiny", "prompt": "x", "steps": 2, "width": 32, "height": 32, "device": "cpu"}
    ids = [server.call("POST", "/api/generate", body)[1]["id"] for _ in range(3)]
    seen_running, end = 0, time.monotonic() + 240
    while time.monotonic() < end:
        tasks = [server.call("GET", f"/api/tasks/{i}")[1] for i in ids]
        running = [t for t in tasks if t["status"] == "running"]
        seen_running = max(seen_running, len(running))
        assert len(running) <= 1, tasks
        if all(t["status"] in ("done", "failed") for t in tasks):
            break
        time.sleep(0.05)
    assert [t["status"] for t in tasks] == ["done"] * 3, tasks
    assert seen_running == 1


def test_kill_9_of_the_server_ends_in_a_checkpoint_at_the_current_step(tmp_path):
    from zlora.ui.runner import alive

    server = UIServer(tmp_path / "ui").start()
    try:
        text = job_yaml("k9", steps=2000, save_every=1000, prompts=False)
        job = server.wait_job(
            server.call("POST", "/api/jobs", {"config_yaml": text})[1]["id"], lambda j: j["step"] >= 4
        )
        trainers = [
            int(p) for p in os.listdir("/proc") if p.isdigit() and _is_trainer_under(int(p), tmp_path / "ui")
        ]
        assert trainers
    finally:
        server.kill()  # SIGKILL: the kernel sends the trainer its parent-death SIGTERM
    run = Path(job["run_dir"])
    rows_file = run / "metrics.jsonl"
    end = time.monotonic() + 60
    while any(alive(t) for t in trainers) and time.monotonic() < end:  # it checkpoints, then exits
        time.sleep(0.2)
    steps = [json.loads(x)["step"] for x in rows_file.read_text().splitlines() if '"loss"' in x]
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints[-1] == f"step-{steps[-1]:06d}", (checkpoints, steps[-3:])  # no step lost


def _is_trainer_under(pid: int, data_dir: Path) -> bool:
    """A `zlora train <data dir>/jobs/N/config.yaml` child of the UI (Linux: /proc)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"train" in cmd and any(c.startswith(str(data_dir / "jobs").encode()) for c in cmd)
