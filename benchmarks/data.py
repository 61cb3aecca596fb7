"""Data-path throughput: images/s for first-run latent caching, for a second run's start (everything cached:
hash only, no decode), for loading cached batches, and for uncached batches (decode + VAE every draw).

    python benchmarks/data.py [--images 300] [--resolution 512] [--model builtin:tiny] [--device auto]

Images are generated JPEGs of mixed sizes and aspect ratios (about 0.5-1 MP). With builtin:tiny the VAE costs
almost nothing, so the numbers measure what the data path itself costs (read, hash, decode, resize, store);
with a real model they include the real VAE. Not part of the test suite; record results in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zlora.config import parse_config
from zlora.data.loader import TrainData
from zlora.models.load import load_components, resolve_device, resolve_model


def make_images(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    shapes = [(1024, 768), (768, 1024), (896, 896), (1152, 640), (640, 1152), (1000, 700)]
    for i in range(n):
        w, h = shapes[i % len(shapes)]
        base = rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8)
        im = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)  # smooth, photo-like JPEG sizes
        im.save(folder / f"img{i:04d}.jpg", quality=90)
        (folder / f"img{i:04d}.txt").write_text(f"picture number {i}", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--model", default="builtin:tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    folder = resolve_model(args.model).folder
    vae = load_components(folder, torch.float32, text_encoder=False).vae.to(device)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "images"
        data_dir.mkdir()
        make_images(data_dir, args.images)
        mb = sum(p.stat().st_size for p in data_dir.glob("*.jpg")) / 2**20

        def cfg(cached: bool):
            return parse_config(
                {
                    "job": {"device": args.device},
                    "train": {"batch_size": args.batch_size},
                    "datasets": [
                        {
                            "folder_path": str(data_dir),
                            "resolution": args.resolution,
                            "cache_latents": cached,
                            "cache_dir": f"{tmp}/cache",
                        }
                    ],
                }
            )

        def prepare(cached: bool) -> tuple[TrainData, float]:
            t0 = time.perf_counter()
            data = TrainData(cfg(cached), folder, device)
            data.prepare_latents(vae)
            return data, time.perf_counter() - t0

        first, t_first = prepare(True)
        second, t_second = prepare(True)
        assert second.encoder_calls["vae"] == 0

        def batches(data: TrainData, n_batches: int, use_vae) -> float:
            order = data.order()
            t0 = time.perf_counter()
            n = 0
            for _ in range(n_batches):
                idx = order.next_batch()
                data.latents(idx, use_vae)
                n += len(idx)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return n / (time.perf_counter() - t0)

        n_batches = args.images // args.batch_size
        cached_rate = batches(second, n_batches, None)
        uncached, _ = prepare(False)
        uncached_rate = batches(uncached, max(1, n_batches // 4), vae)

    n = args.images
    print(f"{n} JPEGs ({mb:.0f} MiB), resolution {args.resolution}, model {args.model}, device {device}")
    print(f"first run, caching:       {n / t_first:8.1f} img/s ({t_first:.1f} s)")
    print(f"second run, all cached:   {n / t_second:8.1f} img/s ({t_second:.2f} s: read + sha256, no decode)")
    print(f"cached batches:           {cached_rate:8.1f} img/s")
    print(f"uncached batches:         {uncached_rate:8.1f} img/s (decode + resize + VAE at every draw)")


if __name__ == "__main__":
    main()
