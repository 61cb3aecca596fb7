"""LoRA tools on a random LoRA with the real Z-Image shapes: rank 16 on the 30 main layers x q, k, v, out, w1, w2, w3
plus adaLN (240 modules; dim 3840, FFN 10240, adaLN 256 -> 15360). Times inspect, convert, exact merge and a rank-8
merge. Goal (issue 6): inspect, convert and exact merge each under 2 s on CPU.

    python benchmarks/lora_tools.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from zlora.lora.codecs import write_modules
from zlora.lora.modules import LoraModule
from zlora.lora.tools import convert_lora, inspect_lora, merge_loras

DIM, FFN, RANK = 3840, 10240, 16
SHAPES = {  # component -> (in, out)
    "attention.to_q": (DIM, DIM),
    "attention.to_k": (DIM, DIM),
    "attention.to_v": (DIM, DIM),
    "attention.to_out.0": (DIM, DIM),
    "feed_forward.w1": (DIM, FFN),
    "feed_forward.w2": (FFN, DIM),
    "feed_forward.w3": (DIM, FFN),
    "adaLN_modulation.0": (256, 4 * DIM),
}


def random_lora(seed: int) -> dict[str, LoraModule]:
    g = torch.Generator().manual_seed(seed)
    return {
        f"layers.{i}.{c}": LoraModule(
            (torch.randn(RANK, fan_in, generator=g) * 0.01).bfloat16(),
            (torch.randn(fan_out, RANK, generator=g) * 0.01).bfloat16(),
            16.0,
        )
        for i in range(30)
        for c, (fan_in, fan_out) in SHAPES.items()
    }


def timed(label: str, fn) -> None:
    start = time.perf_counter()
    fn()
    print(f"{label:<28} {time.perf_counter() - start:6.2f} s")


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as d:
        a, b = Path(d) / "a.safetensors", Path(d) / "b.safetensors"
        save_file(write_modules(random_lora(0), "zlora"), str(a))
        save_file(write_modules(random_lora(1), "zlora"), str(b))
        print(f"LoRA: 240 modules, rank {RANK}, bf16, {a.stat().st_size / 2**20:.0f} MiB per file")
        timed("inspect", lambda: inspect_lora(a))
        timed("convert -> kohya", lambda: convert_lora(a, Path(d) / "k.safetensors", "kohya"))
        timed("convert -> comfy-fused", lambda: convert_lora(a, Path(d) / "c.safetensors", "comfy-fused"))
        timed(
            "merge exact (2 inputs)",
            lambda: merge_loras([(str(a), 0.7), (str(b), 0.4)], Path(d) / "m.safetensors"),
        )
        timed(
            "merge --rank 16 (SVD)",
            lambda: merge_loras([(str(a), 0.7), (str(b), 0.4)], Path(d) / "r.safetensors", 16),
        )


if __name__ == "__main__":
    main()
