"""What a job's run folder says about it: progress from metrics.jsonl (read from the end, so a 100k-step log costs
the same as a short one), preview images, and the LoRA files to download."""

from __future__ import annotations

import json
import re
from pathlib import Path

_SAMPLE = re.compile(r"^step-(\d+)_p(\d+)_s(-?\d+)\.png$")
_TAIL_BYTES = 16384
WINDOW = 20  # steps averaged for s/step


def metrics_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written right now
            continue
    return rows


def _tail_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - _TAIL_BYTES))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []
    if size > _TAIL_BYTES:
        lines = lines[1:]  # the first line may be cut
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def progress(run_dir: Path, steps: int) -> dict:
    """step, loss, lr, s/step (mean of the last steps) and ETA."""
    rows = [r for r in _tail_rows(run_dir) if "loss" in r]  # judge rows (builtin:shapes) have no loss
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


def samples(run_dir: Path) -> list[dict]:
    """Preview images: {step, prompt_index, seed, path (relative to the run folder)}, by step then prompt."""
    folder = run_dir / "samples"
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        m = _SAMPLE.match(p.name)
        if m:
            out.append(
                {
                    "step": int(m.group(1)),
                    "prompt_index": int(m.group(2)),
                    "seed": int(m.group(3)),
                    "path": f"samples/{p.name}",
                }
            )
    return sorted(out, key=lambda s: (s["step"], s["prompt_index"], s["seed"]))


def lora_files(run_dir: Path, name: str) -> list[dict]:
    """The final LoRA and each checkpoint's LoRA: {name, path, step (None for the final one)}."""
    out = []
    final = run_dir / f"{name}.safetensors"
    if final.is_file():
        out.append({"name": final.name, "path": final.name, "step": None})
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir():
        for d in sorted(ckpts.iterdir()):
            m = re.match(r"^step-(\d+)$", d.name)
            if m and (d / "lora.safetensors").is_file():
                out.append(
                    {
                        "name": f"{name}-{d.name}.safetensors",
                        "path": f"checkpoints/{d.name}/lora.safetensors",
                        "step": int(m.group(1)),
                    }
                )
    return out
