"""zlora's default LoRA file format (ARCHITECTURE.md): ``diffusion_model.<module>.lora_A/B.weight`` plus a scalar
``.alpha`` per module and string metadata. diffusers' ZImagePipeline.load_lora_weights and ComfyUI read it as is.
Without ``.alpha`` diffusers assumes alpha = rank, so it is always written."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from zlora import __version__
from zlora.errors import UserError
from zlora.utils.st import read_tensors, save_tensors

FORMAT_VERSION = "1"


def to_file_dict(
    peft_state: dict[str, torch.Tensor], alpha: float, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """peft keys (``layers.0.attention.to_q.lora_A.weight``) -> zlora file tensors (prefix, per-module alpha)."""
    from zlora.lora.formats import LoraModule, write_modules

    modules = {
        key.removesuffix(".lora_A.weight"): LoraModule(
            value.detach().to("cpu", dtype),
            peft_state[key.replace(".lora_A.", ".lora_B.")].detach().to("cpu", dtype),
            float(alpha),
        )
        for key, value in peft_state.items()
        if key.endswith(".lora_A.weight")
    }
    return write_modules(modules, "zlora")


def save_lora(
    path: str | Path,
    peft_state: dict[str, torch.Tensor],
    *,
    rank: int,
    alpha: float,
    dtype: torch.dtype,
    metadata: dict[str, object] | None = None,
    hint: str = "",
) -> None:
    tensors = to_file_dict(peft_state, alpha, dtype)
    meta = {
        "format": "zlora",
        "format_version": FORMAT_VERSION,
        "zlora_version": __version__,
        "rank": str(rank),
        "alpha": str(alpha),
    }
    for k, v in (metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    save_tensors(path, tensors, meta, hint=hint)


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if path.is_dir():
        inside = ", ".join(sorted(p.name for p in path.glob("*.safetensors"))) or "none"
        raise UserError(f"{path} is a folder; point at one of its .safetensors files: {inside}")
    if not path.is_file():
        raise UserError(f"LoRA file not found: {path}")
    if path.suffix.lower() != ".safetensors":
        raise UserError(
            f"{path}: LoRA files must be .safetensors (pickle files such as .pt/.ckpt are never loaded)"
        )
    return read_tensors(path)
