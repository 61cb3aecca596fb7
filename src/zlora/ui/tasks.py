"""Background tasks of the web UI besides training: model pulls, verifies, exports and image generation, each as the
`zlora` command a user would type, in a child process (the server never loads a model). Status and progress live
on the server, so a page reload shows where a task is."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from zlora.ui.runner import alive, child_options, last_errors

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, args TEXT NOT NULL, status TEXT NOT NULL,
    pid INTEGER, exit_code INTEGER, message TEXT, created REAL NOT NULL, finished REAL, argv TEXT
)
"""
# Child processes of each kind that run at once; more wait, queued (a burst of requests never starts a process
# each). Training jobs have their own queue (one per device, runner.py).
BOUNDS = {"generate": 1, "pull": 2, "verify": 1, "export": 1}
POLL_S = 0.25


class Settings(BaseModel):
    endpoint: str | None = Field(
        None, description="hub or mirror URL (hub.endpoint); empty: $HF_ENDPOINT or the hub"
    )
    models_dir: str | None = Field(None, description="where pulled models live; empty: the default")


class PullBody(BaseModel):
    ref: str = Field(description="org/name[@revision] or org/name/path/file.safetensors")
    endpoint: str | None = None


class RefBody(BaseModel):
    ref: str


class ExportBody(BaseModel):
    ref: str
    to: str


class GenLora(BaseModel):
    lora: str = Field(description="a reference from GET /api/loras")
    weight: float = Field(0.8, ge=-10, le=10, allow_inf_nan=False)


class GenerateBody(BaseModel):
    """Steps, guidance and size left out take the model's sampling defaults, as ``zlora generate`` does."""

    model: str = "builtin:shapes"
    prompt: str
    negative: str = ""
    loras: list[GenLora] = Field(default_factory=list)
    steps: int | None = Field(None, ge=1, le=200)
    guidance: float | None = Field(None, ge=0, le=30)
    seed: int = Field(42, ge=0, le=2**32 - 1)
    width: int | None = Field(None, ge=16, le=4096, multiple_of=16)
    height: int | None = Field(None, ge=16, le=4096, multiple_of=16)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class Tasks:
    """The queue of child tasks, kept in the job store's SQLite file; one thread starts them (within ``BOUNDS``)
    and turns their exit codes into statuses. Children are started from that one long-lived thread: Linux delivers
    the parent-death signal when the *thread* that started a child exits, so a request's worker thread must not."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(data_dir / "zlora.db"), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute(_SCHEMA)
        if "argv" not in {r["name"] for r in self._db.execute("PRAGMA table_info(tasks)")}:
            self._db.execute("ALTER TABLE tasks ADD COLUMN argv TEXT")  # a data dir from before the queue
        self.procs: dict[int, subprocess.Popen] = {}
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._loop, name="zlora-tasks", daemon=True)
        for row in self._q(
            "SELECT id, pid FROM tasks WHERE status IN ('running', 'queued')"
        ):  # the server went down
            if not alive(row["pid"]):
                self._q("UPDATE tasks SET status = 'interrupted' WHERE id = ?", (row["id"],))

    def _q(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def log_path(self, task_id: int) -> Path:
        return self.data_dir / "tasks" / f"{task_id}.log"

    def start(self, kind: str, args: dict, argv: list[str]) -> int:
        """Queue a `zlora` command (``{id}`` in ``argv`` becomes the task id); it starts when a slot is free."""
        with self._lock:
            task_id = self._db.execute(
                "INSERT INTO tasks (kind, args, status, created) VALUES (?, ?, 'queued', ?)",
                (kind, json.dumps(args), time.time()),
            ).lastrowid
        argv = [a.replace("{id}", str(task_id)) for a in argv]
        self._q("UPDATE tasks SET argv = ? WHERE id = ?", (json.dumps(argv), task_id))
        self._wake.set()
        return task_id

    def run(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._reap()
                self._launch()
            except Exception:  # the queue must outlive any one task's problem
                log.exception("task queue")
            self._wake.wait(POLL_S)
            self._wake.clear()

    def _reap(self) -> None:
        for task_id, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.procs[task_id]
            message = None if code == 0 else last_errors(self.log_path(task_id)) or f"exit code {code}"
            self._q(
                "UPDATE tasks SET status = ?, exit_code = ?, message = ?, finished = ? WHERE id = ?",
                ("done" if code == 0 else "failed", code, message, time.time(), task_id),
            )

    def _launch(self) -> None:
        running: dict[str, int] = {}
        for row in self._q("SELECT kind FROM tasks WHERE status = 'running'"):
            running[row["kind"]] = running.get(row["kind"], 0) + 1
        for row in self._q("SELECT id, kind, argv FROM tasks WHERE status = 'queued' ORDER BY id"):
            if running.get(row["kind"], 0) >= BOUNDS.get(row["kind"], 1) or row["argv"] is None:
                continue
            running[row["kind"]] = running.get(row["kind"], 0) + 1
            self._spawn(row["id"], json.loads(row["argv"]))

    def _spawn(self, task_id: int, argv: list[str]) -> None:
        path = self.log_path(task_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "zlora", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                **child_options(),
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.procs[task_id] = proc
        self._q("UPDATE tasks SET status = 'running', pid = ? WHERE id = ?", (proc.pid, task_id))

    def get(self, task_id: int) -> dict | None:
        rows = self._q("SELECT * FROM tasks WHERE id = ?", (task_id,))
        if not rows:
            return None
        task = dict(rows[0])
        task["args"] = json.loads(task["args"])
        task.pop("argv", None)
        return task

    def all(self) -> list[dict]:
        return [self.get(r["id"]) for r in self._q("SELECT id FROM tasks ORDER BY id")]


def router(data_dir: Path, store, tasks: Tasks) -> APIRouter:
    api = APIRouter()
    settings_path = data_dir / "settings.json"

    def settings() -> Settings:
        try:
            return Settings.model_validate_json(settings_path.read_text())
        except (OSError, ValueError):
            return Settings()

    def hub_args(endpoint: str | None = None) -> list[str]:
        s = settings()
        endpoint = endpoint or s.endpoint
        return [
            *(["--endpoint", endpoint] if endpoint else []),
            *(["--models-dir", s.models_dir] if s.models_dir else []),
        ]

    def hub():
        from zlora.hub.manifest import hub_settings

        s = settings()
        return hub_settings(s.models_dir, s.endpoint)

    @api.get("/api/settings")
    def get_settings() -> dict:
        s = settings()
        return {
            **s.model_dump(),
            "effective_endpoint": hub().endpoint or "https://huggingface.co",
            "effective_models_dir": str(hub().models_dir),
        }

    @api.put("/api/settings")
    def put_settings(body: Settings) -> dict:
        from zlora.hub.pull import check_endpoint
        from zlora.utils.io import atomic_write_text

        if body.endpoint:
            try:
                check_endpoint(body.endpoint)
            except Exception as e:  # UserError: the message says what a URL looks like
                raise HTTPException(422, str(e)) from None
        atomic_write_text(settings_path, body.model_dump_json())
        return get_settings()

    @api.get("/api/models")
    def models() -> list[dict]:
        from zlora.hub.local import list_models

        return list_models(hub())

    def progress(task: dict) -> dict:
        if task["kind"] != "pull":
            return task
        from zlora.hub.manifest import model_folder
        from zlora.hub.pull import pull_progress, split_ref

        try:
            repo, rev, _ = split_ref(task["args"]["ref"])
        except Exception:
            return task
        done, total = pull_progress(model_folder(hub(), repo, rev))
        return {**task, "bytes": done, "total": total}

    @api.post("/api/models/pull")
    def pull(body: PullBody) -> dict:
        from zlora.hub.pull import check_endpoint, split_ref

        try:
            split_ref(body.ref)
            check_endpoint(body.endpoint)
        except Exception as e:
            raise HTTPException(422, str(e)) from None
        return {
            "id": tasks.start(
                "pull", body.model_dump(), ["models", "pull", body.ref, *hub_args(body.endpoint)]
            )
        }

    @api.post("/api/models/verify")
    def verify(body: RefBody) -> dict:
        return {"id": tasks.start("verify", body.model_dump(), ["models", "verify", body.ref, *hub_args()])}

    @api.post("/api/models/export")
    def export(body: ExportBody) -> dict:
        return {
            "id": tasks.start("export", body.model_dump(), ["models", "export", body.ref, "--to", body.to])
        }

    @api.post("/api/generate")
    def generate(body: GenerateBody) -> dict:
        from zlora.config.presets import fill_sampling
        from zlora.ui.loratools import resolve_ref

        body = body.model_copy(update=fill_sampling(body.model, body.model_dump()))
        argv = [
            "generate",
            "--model",
            body.model,
            "--prompt",
            body.prompt,
            "--negative",
            body.negative,
            "--steps",
            str(body.steps),
            "--guidance",
            str(body.guidance),
            "--seed",
            str(body.seed),
            "--width",
            str(body.width),
            "--height",
            str(body.height),
            "--device",
            body.device,
            "-o",
            str(data_dir / "images" / "task-{id}.png"),
        ]
        for item in body.loras:
            argv += ["--lora", f"{resolve_ref(data_dir, store, item.lora)}:{item.weight}"]
        (data_dir / "images").mkdir(parents=True, exist_ok=True)
        return {"id": tasks.start("generate", body.model_dump(), argv)}

    @api.get("/api/tasks")
    def list_tasks() -> list[dict]:
        return [progress(t) for t in tasks.all()]

    @api.get("/api/tasks/{task_id}")
    def get_task(task_id: int) -> dict:
        task = tasks.get(task_id) if 0 < task_id < 2**62 else None
        if task is None:
            raise HTTPException(404, f"no task {task_id}")
        log = tasks.log_path(task_id)
        tail = log.read_text(errors="replace").splitlines()[-20:] if log.is_file() else []
        image = data_dir / "images" / f"task-{task_id}.png"
        return {
            **progress(task),
            "log": "\n".join(x.rsplit("\r", 1)[-1] for x in tail),
            "image": f"/api/tasks/{task_id}/image"
            if task["kind"] == "generate" and image.is_file()
            else None,
        }

    @api.get("/api/tasks/{task_id}/image")
    def task_image(task_id: int) -> FileResponse:
        image = data_dir / "images" / f"task-{task_id}.png"
        if not (0 < task_id < 2**62) or not image.is_file():
            raise HTTPException(404, f"task {task_id} has no image")
        return FileResponse(image)

    return api
