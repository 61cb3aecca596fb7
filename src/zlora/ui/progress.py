"""What a job's run folder says about it, for the job pages: progress from the tail of metrics.jsonl (a 100k-step
log costs the same as a short one). The folder's layout and the reader are ``zlora.runfolder``'s."""

from __future__ import annotations

from zlora.runfolder import RunFolder

WINDOW = 20  # steps averaged for s/step


def phase(run: RunFolder, status: str, started: float | None) -> str | None:
    """``starting`` while a running job's trainer has not yet written to metrics.jsonl since it started (loading,
    caching, resuming: the numbers shown are the previous run's), ``training`` after; None when not running."""
    if status != "running":
        return None
    try:
        fresh = started is not None and run.metrics.stat().st_mtime >= started
    except OSError:
        fresh = False
    return "training" if fresh else "starting"


def progress(run: RunFolder, steps: int, status: str = "running", started: float | None = None) -> dict:
    """step, loss, lr, s/step (mean of the last steps), the ETA (only while training) and the phase."""
    now = phase(run, status, started)
    rows = [r for r in run.read_metrics(tail=True) if "loss" in r]  # judge rows (builtin:shapes) have no loss
    if not rows:
        return {
            "step": 0,
            "steps": steps,
            "loss": None,
            "lr": None,
            "s_per_step": None,
            "eta_s": None,
            "phase": now,
        }
    last = rows[-1]
    recent = [r["seconds"] for r in rows[-WINDOW:] if "seconds" in r]
    s_per_step = sum(recent) / len(recent) if recent else None
    training = now == "training"
    eta = s_per_step * max(0, steps - last["step"]) if s_per_step is not None and training else None
    return {
        "step": last["step"],
        "steps": steps,
        "loss": last.get("loss"),
        "lr": last.get("lr"),
        "s_per_step": s_per_step,
        "eta_s": eta,
        "phase": now,
    }
