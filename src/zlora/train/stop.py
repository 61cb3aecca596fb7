"""Graceful stop: the first SIGINT/SIGTERM asks the trainer to finish its step and checkpoint; a second one
aborts at once (KeyboardInterrupt, which the CLI reports as "aborted", exit 130)."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """Raised after the emergency checkpoint of a SIGINT/SIGTERM has been written."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class GracefulStop:
    def __init__(self) -> None:
        self.signal: int | None = None  # the signal that asked for a stop
        self._old: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals can only be handled on the main thread (e.g. a UI worker thread)

        def request_stop(signum, frame):
            if self.signal is not None:  # second Ctrl-C: stop now, without a checkpoint
                raise KeyboardInterrupt
            self.signal = signum
            log.warning(
                "%s received: finishing this step and writing a checkpoint (again to abort now)",
                signal.Signals(signum).name,
            )

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, request_stop)

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()

    def interrupted(self, step: int, checkpoint_dir) -> TrainingInterrupted:
        return TrainingInterrupted(
            f"stopped at step {step}; checkpoint written to {checkpoint_dir}. "
            "Run the same command again to resume from it.",
            exit_code=128 + int(self.signal or signal.SIGINT),
        )
