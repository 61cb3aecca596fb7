"""One trainer per run folder, and only in a folder of zlora's. Two trainers writing one run folder would interleave checkpoints, metrics and the
final LoRA; the second one to start exits with a one-line error that names the first.

The lock is an OS file lock (``filelock``: fcntl on Linux/macOS, msvcrt on Windows), so it is released by the OS
when its holder dies, also by ``kill -9``; beside it a small JSON file says who holds it. Both sit next to the run
folder (``<output_dir>/.<name>.lock``), not inside it, so a start that fails leaves the run folder as it was."""

from __future__ import annotations

import json
import logging
import os
import socket
import time

from zlora.errors import UserError
from zlora.runfolder import RunFolder
from zlora.utils.io import make_dirs

log = logging.getLogger(__name__)


def check_run_folder(run: RunFolder) -> None:
    """A folder that exists must be a run of this job (or empty): zlora never writes its checkpoints, config.yaml
    or metrics.jsonl over a folder of the user's."""
    root = run.root
    if root.exists() and not root.is_dir():
        raise UserError(f"`job.name` / `job.output_dir`: {root} is a file; choose another job.name")
    if root.is_dir() and any(root.iterdir()) and not run.is_run_of(run.name):
        raise UserError(
            f"`job.name` / `job.output_dir`: {root} exists and is not a zlora run of {run.name!r}; "
            "choose another job.name or job.output_dir (zlora does not write into a folder of yours)"
        )


class RunLock:
    # A holder killed a moment ago may not have exited yet (a kill -9 waits until a worker's fsync returns),
    # so "kill, then run the same command again" waits this long for the OS to free the lock before refusing.
    GRACE_S = 5.0

    def __init__(self, run: RunFolder):
        self.run = run
        self.path = run.root.parent / f".{run.name}.lock"
        self.info = run.root.parent / f".{run.name}.lock.json"
        self._lock = None

    def acquire(self) -> None:
        from filelock import FileLock, Timeout

        make_dirs(self.path.parent)
        lock = FileLock(str(self.path), timeout=self.GRACE_S, poll_interval=0.1)
        try:
            lock.acquire()
        except Timeout:
            holder = self._holder()
            who = f"process {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
            raise UserError(
                f"{self.run.root} is being trained by {who}; wait for it to finish, stop it, or use another job.name"
            ) from None
        except OSError as e:
            raise UserError(
                f"cannot lock {self.path}: {e.strerror or e}; choose a writable job.output_dir"
            ) from None
        self._lock = lock
        stale = self._holder()
        if stale and stale.get("pid") != os.getpid():  # its holder died without releasing (killed, power cut)
            who = f"process {stale.get('pid')} on {stale.get('host')}"
            log.warning("took over the run folder lock of %s (no longer running)", who)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        self.info.write_text(json.dumps(record) + "\n", encoding="utf-8")

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.info.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._lock is None:
            return
        self.info.unlink(missing_ok=True)
        # Unlinked while still held: a trainer waiting on it then locks a deleted file, which filelock (>= 4.3)
        # notices and re-opens the path. Unlinked after the release, a waiter could hold the deleted file's lock
        # while a third trainer locks a new file of the same name. Windows cannot unlink an open file;
        # filelock removes it there on release.
        try:
            self.path.unlink()
        except OSError:
            pass
        self._lock.release()
        self._lock = None
