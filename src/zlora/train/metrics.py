"""metrics.jsonl (one line per step) and loss.png, and the peak-memory reading each step logs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from zlora.runfolder import read_metrics
from zlora.utils.io import atomic_write, atomic_write_text


class MetricsLog:
    def __init__(self, path: Path, resume_step: int):
        self.path = path
        # A killed run may have logged steps after its last checkpoint; those steps are redone, so drop them.
        if path.is_file():
            kept = [r for r in read_metrics(path) if r["step"] <= resume_step]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def log(self, **row) -> None:
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory so far: allocated device memory on CUDA, the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource  # POSIX only
    except ImportError:  # Windows: the peak working set through psutil when it is there, else unknown
        try:
            import psutil

            return getattr(psutil.Process().memory_info(), "peak_wset", 0) / 2**30
        except ImportError:
            return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def plot_loss(metrics_path: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_rows = read_metrics(metrics_path)
    rows = [r for r in all_rows if "loss" in r]  # judge rows (builtin:shapes) and validation rows have none
    val = [r for r in all_rows if "val_loss" in r]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    smooth, ema = [], 0.0
    for i, v in enumerate(loss, 1):  # a (bias-corrected) EMA shows the trend through the noisy per-step loss
        ema = 0.9 * ema + 0.1 * v
        smooth.append(ema / (1 - 0.9**i))
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    ax.plot(steps, loss, alpha=0.3, label="loss")
    ax.plot(steps, smooth, label="EMA 0.9")
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(out_png, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def progress_bar(total: int, initial: int, main: bool):
    """The training bar (main process only); a log file gets a line every 10 s, not every redraw."""
    from tqdm.auto import tqdm

    interval = 0.1 if sys.stderr.isatty() else 10
    return tqdm(
        total=total,
        initial=initial,
        desc="training",
        unit="step",
        dynamic_ncols=True,
        mininterval=interval,
        disable=not main,
    )


def advance(bar, loss: float, lr: float, seconds: float, mem: float) -> None:
    """One step on the training bar, with the step's numbers beside it."""
    postfix = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "s_step": f"{seconds:.3f}", "mem_gib": f"{mem:.2f}"}
    bar.set_postfix(postfix, refresh=False)  # bar.update() redraws
    bar.update()
