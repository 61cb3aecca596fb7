"""The task runner: trains queued jobs in child processes (`zlora train`, the same command a user types), one at a
time per device, and turns their exit codes into statuses. The server never trains in its own process.

A child gets SIGTERM when the server dies (Linux ``PR_SET_PDEATHSIG``), which makes the trainer finish its step and
write a checkpoint; at the next server start such a job shows as ``interrupted`` and resumes from it."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from zlora.ui.store import ACTIVE, Job, JobStore

log = logging.getLogger(__name__)
POLL_S = 0.25


def device_slot(device: str) -> str:
    """Jobs on the same slot wait for each other. ``auto`` is the first GPU where one exists (read without importing
    torch, so the server starts fast), else the CPU."""
    if device == "auto":
        return "cuda:0" if Path("/dev/nvidia0").exists() else "cpu"
    return "cuda:0" if device == "cuda" else device


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there; ask the process table instead
        return _alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own finished child not yet reaped) is not alive
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def _alive_windows(pid: int) -> bool:
    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    code = ctypes.c_ulong()
    try:
        return (
            bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259
        )  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the server process dies (Linux; elsewhere nothing to set)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


def child_options() -> dict:
    """Popen options of every child the UI starts: its parent-death signal where the platform has one
    (preexec_fn does not exist on Windows)."""
    return {"preexec_fn": _die_with_parent} if sys.platform.startswith("linux") else {}


def last_errors(log_path: Path, n: int = 3) -> str:
    """The CLI's one-line errors at the end of a job's log (else its last lines)."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    errors = [ln.removeprefix("zlora: error: ") for ln in lines if ln.startswith("zlora: error:")]
    return "\n".join(errors[-n:] if errors else lines[-n:])


class Runner:
    def __init__(self, store: JobStore, data_dir: Path):
        self.store, self.data_dir = store, data_dir
        self.procs: dict[int, subprocess.Popen] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="zlora-runner", daemon=True)

    def job_dir(self, job_id: int) -> Path:
        return self.data_dir / "jobs" / str(job_id)

    def log_path(self, job_id: int) -> Path:
        return self.job_dir(job_id) / "log.txt"

    def start(self) -> None:
        """Jobs that were training when the server went down are ``interrupted`` now; then the loop starts."""
        for job in self.store.with_status(*ACTIVE):
            self.store.update(job.id, status="interrupted", finished=time.time())
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def poke(self) -> None:
        self._wake.set()

    def request_stop(self, job: Job) -> None:
        """The trainer's graceful stop: finish the step, checkpoint, exit (resumable)."""
        self.store.update(job.id, status="stopping")
        proc = self.procs.get(job.id)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)

    # ------------------------------------------------------------------ loop
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._reap()
                self._launch()
            except Exception:  # the runner must outlive any one job's problem
                log.exception("job runner")
            self._wake.wait(POLL_S)
            self._wake.clear()

    def _reap(self) -> None:
        for job_id, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.procs[job_id]
            job = self.store.get(job_id)
            if job is None:  # deleted meanwhile
                continue
            if code == 0:
                status, error = "done", None
            elif code in (130, 143, -signal.SIGINT, -signal.SIGTERM):
                status, error = ("stopped" if job.status == "stopping" else "interrupted"), None
            else:
                status, error = "failed", last_errors(self.log_path(job_id)) or f"exit code {code}"
            self.store.update(job_id, status=status, error=error, exit_code=code, finished=time.time())

    def _launch(self) -> None:
        busy = {device_slot(j.device) for j in self.store.with_status(*ACTIVE)}
        for job in self.store.with_status("queued"):
            slot = device_slot(job.device)
            if slot not in busy:
                busy.add(slot)
                self._spawn(job)

    def _spawn(self, job: Job) -> None:
        folder = self.job_dir(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "config.yaml"
        config.write_text(job.config_yaml, encoding="utf-8")
        logf = open(self.log_path(job.id), "ab")  # noqa: SIM115 - the child holds it; closed below
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "zlora", "train", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                **child_options(),
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            logf.close()
        self.procs[job.id] = proc
        self.store.update(
            job.id, status="running", pid=proc.pid, started=time.time(), error=None, exit_code=None
        )
