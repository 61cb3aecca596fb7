"""Trainer overhead: seconds per step of zlora's ``Trainer.train()`` vs a bare PyTorch loop doing the same
forward/backward/AdamW step on the same model, LoRA and batches. Reports bare/trainer (goal >= 0.95).

    python benchmarks/overhead.py [--steps 200] [--resolution 64] [--batch-size 2] [--device auto]

Not part of the test suite; record results in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from zlora.config import parse_config
from zlora.train.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent


def make_trainer(args, out: str) -> Trainer:
    cfg = parse_config(
        {
            "job": {"name": "bench", "output_dir": out, "device": args.device},
            "model": {"name_or_path": args.model, "dtype": args.dtype},
            "network": {"linear": 16, "linear_alpha": 16},
            "save": {"save_every": 10**9},
            "train": {
                "steps": args.steps,
                "batch_size": args.batch_size,
                "lr": 1e-4,
                "gradient_checkpointing": False,
            },
            "datasets": [
                {
                    "folder_path": str(REPO / "examples" / "shapes"),
                    "resolution": args.resolution,
                    "cache_latents": True,
                    "cache_dir": f"{out}/cache",
                }
            ],
        }
    )
    t = Trainer(cfg)
    t.setup()
    return t


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(t: Trainer, steps: int, batch_size: int) -> float:
    """The same work without the trainer: stacked latents, one transformer call per batch, AdamW."""
    params = [p for p in t.transformer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    n = len(t.data.entries)
    latents = torch.stack(t.data.latents(list(range(n)), t.parts.vae))  # (N, C, h, w): one bucket
    caps = [t.data.embedding(e.caption) for e in t.data.entries]
    g = torch.Generator(t.device).manual_seed(0)
    sync(t.device)
    start = time.perf_counter()
    for step in range(steps):
        idx = [(step * batch_size + i) % n for i in range(batch_size)]
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=g, device=t.device)
        sigma = torch.sigmoid(torch.randn(batch_size, generator=g, device=t.device))
        x_s = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
        out = t.transformer(
            list(x_s.unsqueeze(2).unbind(0)), 1 - sigma, [caps[i] for i in idx], return_dict=False
        )[0]
        pred = torch.stack(out).squeeze(2)
        loss = F.mse_loss(pred.float(), x0 - noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the trainer reads the loss every step too
    sync(t.device)
    return (time.perf_counter() - start) / steps


def trainer_seconds(args, steps: int) -> float:
    """Wall time of ``Trainer.train()`` for ``steps`` steps (includes the final checkpoint and loss plot)."""
    with tempfile.TemporaryDirectory() as out:
        t = make_trainer(argparse.Namespace(**{**vars(args), "steps": steps}), out)
        sync(t.device)
        start = time.perf_counter()
        t.train()
        sync(t.device)
        elapsed = time.perf_counter() - start
        t.cleanup()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:tiny")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as out:
        t = make_trainer(args, out)
        bare_loop(t, 10, args.batch_size)  # warm-up
        bare = min(bare_loop(t, args.steps, args.batch_size) for _ in range(args.repeats))
    # Steady state: the difference of two run lengths cancels one-off costs (first-step warm-up, the final
    # checkpoint, matplotlib's import and the loss plot), which are reported separately.
    short, long = args.steps // 5, args.steps
    t_short = min(trainer_seconds(args, short) for _ in range(args.repeats))
    t_long = min(trainer_seconds(args, long) for _ in range(args.repeats))
    ours = (t_long - t_short) / (long - short)
    one_off = t_short - short * ours
    print(
        f"device={t.device} model={args.model} res={args.resolution} batch={args.batch_size} steps={args.steps}"
    )
    print(
        f"bare {bare * 1e3:.2f} ms/step  trainer {ours * 1e3:.2f} ms/step  ratio bare/trainer = {bare / ours:.3f}"
    )
    print(f"trainer one-off cost per run (warm-up, final checkpoint, loss plot): {one_off:.2f} s")


if __name__ == "__main__":
    main()
