"""The drift score of a real model's previews: each preview prompt without the trigger word is compared with its
own step-0 image (same prompt, same seed, the saved ``samples/step-000000_p<i>_s<seed>.png``) by SSIM, computed by
torchmetrics (a maintained implementation: Gaussian window 11, sigma 1.5, on RGB in [0, 1]). Drift is 1 - SSIM:
0 when the LoRA leaves those prompts alone. On ``builtin:shapes`` the pixel judge scores drift instead."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)


def ssim(a: Image.Image, b: Image.Image) -> float:
    from torchmetrics.functional.image import structural_similarity_index_measure

    def tensor(im: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]

    if a.size != b.size:
        b = b.resize(a.size)
    return float(structural_similarity_index_measure(tensor(a), tensor(b), data_range=1.0))


def drift(samples: Path, step_tag: str, first_tag: str, cells, indices, trigger: str | None) -> dict | None:
    """{"mean", "worst": {"prompt", "drift"}, "prompts": [{"prompt", "seed", "drift"}]} of this step's cells
    (``(prompt, seed, image)``, prompt index from ``indices``) against the step-0 files; None when no prompt is
    without the trigger or step 0 was not rendered."""
    rows = []
    for (prompt, seed, image), i in zip(cells, indices, strict=True):
        if trigger and trigger in prompt:
            continue
        first = samples / f"{first_tag}_p{i}_s{seed}.png"
        if not first.is_file():
            continue
        with Image.open(first) as im:
            rows.append({"prompt": prompt, "seed": seed, "drift": round(1 - ssim(im, image), 4)})
    if not rows:
        return None
    worst = max(rows, key=lambda r: r["drift"])
    return {
        "mean": round(sum(r["drift"] for r in rows) / len(rows), 4),
        "worst": {"prompt": worst["prompt"], "drift": worst["drift"]},
        "prompts": rows,
    }


def summary(score: dict) -> str:
    return (
        f"prompts without the trigger changed by {score['mean']:.3f} SSIM on average since step 0, worst: "
        f"{score['worst']['prompt'][:60]!r} ({score['worst']['drift']:.3f})"
    )
