"""Bake memory: stream a random bf16 transformer with the real Z-Image shapes (~6 B parameters, ~12 GB) through
``zlora.lora.bake`` with a rank-16 LoRA on 240 modules, sampling the process's anonymous memory (RssAnon: file-backed
mmap pages of the input are page cache, not our memory) every 20 ms. Needs ~25 GB free disk in --dir.

    python benchmarks/bake.py [--dir /tmp] [--layers 30]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import torch

from zlora.lora.bake import bake
from zlora.lora.modules import LoraModule
from zlora.utils.tensorfile import write_streaming

DIM, FFN, RANK = 3840, 10240, 16


def shapes(layers: int) -> list[tuple[str, list[int]]]:
    out = []
    blocks = [f"layers.{i}" for i in range(layers)] + [f"noise_refiner.{i}" for i in range(2)]
    blocks += [f"context_refiner.{i}" for i in range(2)]
    for b in blocks:
        for c in ("to_q", "to_k", "to_v", "to_out.0"):
            out.append((f"{b}.attention.{c}.weight", [DIM, DIM]))
        out += [
            (f"{b}.feed_forward.w1.weight", [FFN, DIM]),
            (f"{b}.feed_forward.w2.weight", [DIM, FFN]),
            (f"{b}.feed_forward.w3.weight", [FFN, DIM]),
        ]
        if not b.startswith("context"):
            out.append((f"{b}.adaLN_modulation.0.weight", [4 * DIM, 256]))
    return out


def rss_anon_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--layers", type=int, default=30)
    args = ap.parse_args()
    spec = shapes(args.layers)
    params = sum(torch.Size(s).numel() for _, s in spec)
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        folder = Path(d) / "base"
        (folder / "transformer").mkdir(parents=True)
        (folder / "transformer" / "config.json").write_text("{}")
        g = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        write_streaming(
            folder / "transformer" / "diffusion_pytorch_model.safetensors",
            [(k, torch.bfloat16, s) for k, s in spec],
            ((torch.randn(s, generator=g) * 0.02).bfloat16() for _, s in spec),
            {},
        )
        size = (folder / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_size
        print(
            f"base: {params / 1e9:.2f} B params, {size / 2**30:.1f} GiB, written in {time.perf_counter() - start:.0f} s"
        )

        lora = {
            k.removesuffix(".weight"): LoraModule(
                torch.randn(RANK, s[1]) * 0.01, torch.randn(s[0], RANK) * 0.01, 16.0
            )
            for k, s in spec
            if k.startswith("layers.")
        }
        peak, stop = [rss_anon_mib()], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak.append(rss_anon_mib())
                time.sleep(0.02)

        threading.Thread(target=sample, daemon=True).start()
        before = rss_anon_mib()
        start = time.perf_counter()
        changed = bake(folder, [(lora, 1.0)], Path(d) / "baked.safetensors")
        elapsed = time.perf_counter() - start
        stop.set()
        largest = max(torch.Size(s).numel() for _, s in spec) * 4 / 2**20
        print(f"bake: {len(changed)} modules changed in {elapsed:.0f} s")
        print(
            f"anonymous memory: {before:.0f} MiB before, peak {max(peak):.0f} MiB "
            f"(+{max(peak) - before:.0f} MiB; largest tensor in fp32: {largest:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
