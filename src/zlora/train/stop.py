"""Graceful stop: the first SIGINT/SIGTERM asks the trainer to finish its step and checkpoint; a second Ctrl-C
(SIGINT) aborts at once (KeyboardInterrupt, which the CLI reports as "aborted", exit 130). Repeated SIGTERMs count
as one: a dying parent (the web UI's server, a launcher) may deliver several, and each must still end in the
checkpoint of the current step."""

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


class TrainingDiverged(Exception):
    """The loss turned NaN/inf: the step's update is not saved; the newest checkpoint is the last good state."""

    exit_code = 3

    def __init__(self, message: str):
        super().__init__(message)

    @classmethod
    def at(cls, loss: float, step: int, latest_name: str | None) -> TrainingDiverged:
        """The error for a non-finite ``loss`` at ``step`` (1-based), naming the checkpoint that is kept."""
        kept = (
            f"the last good checkpoint, {latest_name}, is kept"
            if latest_name
            else "no checkpoint was written"
        )
        return cls(
            f"the loss is {loss} at step {step} (the run diverged); {kept}. Lower train.lr or use "
            "model.dtype=fp32, then resume with --force-resume or start a new run"
        )


class GracefulStop:
    def __init__(self) -> None:
        self.signal: int | None = None  # the signal that asked for a stop
        self._old: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals can only be handled on the main thread (e.g. a UI worker thread)

        def request_stop(signum, frame):
            if self.signal is not None:
                if signum == signal.SIGINT:  # a second Ctrl-C: stop now, without a checkpoint
                    raise KeyboardInterrupt
                return  # SIGTERM again: still the one graceful stop under way
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
