"""What a job's run folder says about it, for the job pages: progress from the tail of metrics.jsonl (a 100k-step
log costs the same as a short one). The folder's layout and the reader are ``zlora.runfolder``'s."""

from __future__ import annotations

from zlora.runfolder import RunFolder

WINDOW = 20  # steps averaged for s/step


def progress(run: RunFolder, steps: int) -> dict:
    """step, loss, lr, s/step (mean of the last steps) and ETA."""
    rows = [r for r in run.read_metrics(tail=True) if "loss" in r]  # judge rows (builtin:shapes) have no loss
    if not rows:
        return {"step": 0, "steps": steps, "loss": None, "lr": None, "s_per_step": None, "eta_s": None}
    last = rows[-1]
    recent = [r["seconds"] for r in rows[-WINDOW:] if "seconds" in r]
    s_per_step = sum(recent) / len(recent) if recent else None
    eta = s_per_step * max(0, steps - last["step"]) if s_per_step is not None else None
    return {
        "step": last["step"],
        "steps": steps,
        "loss": last.get("loss"),
        "lr": last.get("lr"),
        "s_per_step": s_per_step,
        "eta_s": eta,
    }
