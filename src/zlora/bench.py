"""`zlora bench`: the trainer's own training step against a bare peft + AdamW loop on the same model, in one process.

(a) The trainer: `Trainer.setup()` on a synthetic dataset (random images at ``--res``, latents and captions cached
    first, as a real run's second epoch) and `Trainer.step_once()` timed: the code path of `zlora train`.
(b) The floor: the same transformer object (same LoRA, checkpointing and compilation), fed tensors of the same
    shapes, `loss.backward()` + `torch.optim.AdamW`: nothing else.
MFU is the estimated training FLOPs per second over a bf16 (CUDA) / fp32 (CPU) matmul peak measured in the same run.
The FLOP estimate: forward = 2 x (transformer linear weights) x tokens + attention 4 x layers x tokens^2 x dim;
a step = 3 forwards' worth (forward, then input and LoRA gradients), 4 with gradient checkpointing.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_tflops(device: torch.device) -> float:
    """TFLOP/s of a large square matmul: bf16 on CUDA, fp32 on CPU (the dtypes training computes in)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps, start = 10, time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def _dataset(folder: Path, res: int, n: int) -> None:
    from PIL import Image

    for i in range(n):
        Image.effect_noise((res, res), 30 + 5 * i).convert("RGB").save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(
            f"zlr, a random test image number {i} with some words in its caption"
        )


def _step_flops(transformer, tokens: int, checkpointing: bool) -> float:
    cfg = transformer.config
    linear = sum(m.weight.numel() for m in transformer.modules() if isinstance(m, torch.nn.Linear))
    blocks = cfg.n_layers + 2 * cfg.n_refiner_layers
    forward = 2 * linear * tokens + 4 * blocks * tokens**2 * cfg.dim
    return forward * (4 if checkpointing else 3)


def run_bench(
    size: str,
    res: int,
    batch_size: int,
    rank: int,
    steps: int,
    warmup: int,
    device: str,
    overrides: list[str],
) -> dict:
    from zlora.config import apply_overrides, parse_config
    from zlora.config.base import MAX_STEPS
    from zlora.models import zimage
    from zlora.models.quantize import weight_bytes
    from zlora.models.tiny import bench_model_path
    from zlora.train.metrics import peak_memory_gib
    from zlora.train.trainer import Trainer

    model = bench_model_path(size)
    with tempfile.TemporaryDirectory(prefix="zlora-bench-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        _dataset(data, res, max(4, batch_size))
        raw = {
            "job": {"name": "bench", "output_dir": str(Path(tmp) / "out"), "device": device},
            "model": {"name_or_path": str(model)},
            "network": {"linear": rank, "linear_alpha": rank},
            "save": {"save_every": 10**9},
            "sample": {"prompts": []},
            "train": {
                "steps": MAX_STEPS,
                "batch_size": batch_size,
                "lr": 1e-4,
                "cache_text_embeddings": True,
            },
            "datasets": [
                {
                    "folder_path": str(data),
                    "resolution": [res],
                    "cache_latents": True,
                    "caption_dropout_rate": 0.0,
                }
            ],
        }
        cfg = parse_config(apply_overrides(raw, overrides), source="zlora bench")
        trainer = Trainer(cfg)
        if torch.cuda.is_available():  # the peak counts loading too: nothing is reset after setup
            torch.cuda.reset_peak_memory_stats()
        trainer.setup()
        dev = trainer.device
        try:
            # (a) the trainer's step
            for _ in range(warmup):
                trainer.step_once()
            _sync(dev)
            moved = trainer.placement.bytes_moved
            start = time.perf_counter()
            for _ in range(steps):
                trainer.step_once()
            _sync(dev)
            trainer_s = (time.perf_counter() - start) / steps
            moved = (trainer.placement.bytes_moved - moved) / steps
            peak = peak_memory_gib(dev)

            # (b) the floor: same model, same shapes, a bare loop
            idx = trainer.state.order.next_batch()
            x0 = trainer.data.latents(idx, trainer.parts.vae)
            caps = trainer.data.captions(idx, trainer.state.host_generator)
            params = [p for p in trainer.transformer.parameters() if p.requires_grad]  # the model's own LoRA
            opt = torch.optim.AdamW(params, lr=1e-4)
            sig = torch.full((len(x0),), 0.5, device=dev)

            def bare_step():
                noise = [torch.randn_like(x) for x in x0]
                x_s = [zimage.noisy_latents(x, n, 0.5) for x, n in zip(x0, noise, strict=True)]
                pred = zimage.predict(trainer.transformer, x_s, sig, caps, trainer.dtype)
                loss = sum(
                    torch.mean((p.float() - (x - n)) ** 2) for p, x, n in zip(pred, x0, noise, strict=True)
                )
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            for _ in range(warmup):
                bare_step()
            _sync(dev)
            start = time.perf_counter()
            for _ in range(steps):
                bare_step()
            _sync(dev)
            floor_s = (time.perf_counter() - start) / steps
        finally:
            trainer.cleanup()
        c, h, w = x0[0].shape
        tokens = (h // 2) * (w // 2) + caps[0].shape[0]
        flops = _step_flops(trainer.transformer, tokens, cfg.train.gradient_checkpointing) * len(x0)
        peak_tflops = matmul_peak_tflops(dev)
        weights = weight_bytes(trainer.transformer) / 2**30
    achieved = flops / trainer_s / 1e12
    return {
        "size": size,
        "device": str(dev),
        "dtype": str(trainer.dtype).removeprefix("torch."),
        "res": res,
        "batch_size": batch_size,
        "rank": rank,
        "steps": steps,
        "options": overrides,
        "trainer_s_per_step": trainer_s,
        "floor_s_per_step": floor_s,
        "ratio": floor_s / trainer_s,
        "achieved_tflops": achieved,
        "peak_tflops": peak_tflops,
        "mfu": achieved / peak_tflops,
        "peak_mem_gib": peak,
        "weights_gib": weights,
        "compiled": trainer.compiled,
        "swapped_blocks": list(trainer.placement.swapped),
        "moved_gib_per_step": moved / 2**30,
        "placement": trainer.placement.plan.describe() if trainer.placement.plan else "",
    }


def report(r: dict) -> str:
    return "\n".join(
        [
            f"zlora bench: {r['size']} model, {r['device']} ({r['dtype']}), {r['res']} px, batch {r['batch_size']}, "
            f"rank {r['rank']}, {r['steps']} timed steps{', compiled' if r['compiled'] else ''}"
            + (f", options {' '.join(r['options'])}" if r["options"] else ""),
            f"trainer step:  {r['trainer_s_per_step']:.4f} s/step",
            f"bare floor:    {r['floor_s_per_step']:.4f} s/step   ratio floor/trainer {r['ratio']:.3f}",
            f"throughput:    {r['achieved_tflops']:.2f} TFLOP/s achieved (estimate), matmul peak {r['peak_tflops']:.2f},"
            f" MFU {100 * r['mfu']:.1f}%",
            f"memory:        peak {r['peak_mem_gib']:.2f} GiB (loading included), transformer weights "
            f"{r['weights_gib']:.3f} GiB",
        ]
        + (
            [
                f"offloading:    {r['placement']}",
                f"               {r['moved_gib_per_step']:.2f} GiB moved per step"
                + (
                    f"; unswapped step {r['unswapped_s_per_step']:.4f} s, swapped/unswapped "
                    f"{r['swap_ratio']:.3f}"
                    if "swap_ratio" in r
                    else ""
                ),
            ]
            if r.get("swapped_blocks")
            else []
        )
    )


def main(args) -> int:
    from zlora.errors import UserError

    if (
        args.steps < 1
        or args.warmup < 0
        or args.res < 16
        or args.res % 16
        or args.batch_size < 1
        or args.rank < 1
    ):
        raise UserError("--steps, --batch-size and --rank must be positive, --res a multiple of 16")
    r = run_bench(
        args.size, args.res, args.batch_size, args.rank, args.steps, args.warmup, args.device, args.set
    )
    if r["swapped_blocks"]:  # the same bench without swapping, for the ratio (a second, separate setup)
        plain = run_bench(
            args.size,
            args.res,
            args.batch_size,
            args.rank,
            args.steps,
            args.warmup,
            args.device,
            [*args.set, "model.blocks_to_swap=0", "model.low_vram=false"],
        )
        r["unswapped_s_per_step"] = plain["trainer_s_per_step"]
        r["unswapped_peak_mem_gib"] = plain["peak_mem_gib"]
        r["swap_ratio"] = r["trainer_s_per_step"] / plain["trainer_s_per_step"]
    print(report(r))
    if args.json:
        from zlora.utils.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(r, indent=2) + "\n")
    return 0
