"""The job store: one SQLite file in the data dir. A row is a training job: its config (YAML, as submitted), its
status and the child process that trains it. Every write is one short transaction, so the server's threads
(requests, the runner) can share it; SQLite's WAL mode keeps readers from waiting on the runner."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from zlora.runfolder import RunFolder

STATUSES = ("queued", "running", "stopping", "stopped", "interrupted", "done", "failed")
ACTIVE = ("running", "stopping")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    config_yaml TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    device TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    pid INTEGER,
    exit_code INTEGER,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    managed INTEGER NOT NULL,
    created REAL NOT NULL
);
"""


@dataclass
class Job:
    id: int
    name: str
    config_yaml: str
    run_dir: str
    device: str
    status: str
    error: str | None
    pid: int | None
    exit_code: int | None
    created: float
    started: float | None
    finished: float | None

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def run(self) -> RunFolder:
        return RunFolder.at(self.run_dir, self.name)


class JobStore:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def _run(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def add(self, name: str, config_yaml: str, run_dir: str, device: str, status: str = "queued") -> Job:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO jobs (name, config_yaml, run_dir, device, status, created) VALUES (?, ?, ?, ?, ?, ?)",
                (name, config_yaml, run_dir, device, status, time.time()),
            )
            job_id = cur.lastrowid
        return self.get(job_id)

    def get(self, job_id: int) -> Job | None:
        rows = self._run("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job(**dict(rows[0])) if rows else None

    def all(self) -> list[Job]:
        return [Job(**dict(r)) for r in self._run("SELECT * FROM jobs ORDER BY id")]

    def with_status(self, *statuses: str) -> list[Job]:
        marks = ",".join("?" * len(statuses))
        return [
            Job(**dict(r))
            for r in self._run(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY id", statuses)
        ]

    def update(self, job_id: int, **fields) -> None:
        if not fields:
            return
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._run(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    def delete(self, job_id: int) -> None:
        self._run("DELETE FROM jobs WHERE id = ?", (job_id,))

    def add_dataset(self, name: str, path: str, managed: bool) -> None:
        self._run(
            "INSERT INTO datasets (name, path, managed, created) VALUES (?, ?, ?, ?)",
            (name, path, int(managed), time.time()),
        )

    def dataset(self, name: str) -> sqlite3.Row | None:
        rows = self._run("SELECT * FROM datasets WHERE name = ?", (name,))
        return rows[0] if rows else None

    def datasets(self) -> list[sqlite3.Row]:
        return self._run("SELECT * FROM datasets ORDER BY name")

    def close(self) -> None:
        with self._lock:
            self._db.close()
