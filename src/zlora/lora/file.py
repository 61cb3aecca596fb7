"""LoRA files on disk: reading any ``.safetensors`` LoRA (never a pickle) and writing the trainer's LoRA in zlora's
default format (ARCHITECTURE.md): ``diffusion_model.<module>.lora_A/B.weight`` plus a scalar ``.alpha`` per module
and string metadata. diffusers' ZImagePipeline.load_lora_weights and ComfyUI read it as is. Without ``.alpha``
diffusers assumes alpha = rank, so it is always written."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from zlora import __version__
from zlora.errors import UserError
from zlora.lora.codecs import encode
from zlora.lora.modules import LoraModule
from zlora.utils.tensorfile import read_tensors, save_tensors

FORMAT_VERSION = "1"


def save_lora(
    path: str | Path,
    modules: dict[str, LoraModule],
    *,
    metadata: dict[str, object] | None = None,
    hint: str = "",
) -> None:
    """The trainer's LoRA (canonical modules, already in the saved dtype) as a zlora-format file; ``metadata``
    says what trained it (rank, alpha, base model, step, ...)."""
    tensors, _ = encode(modules, "zlora")
    meta = {"format": "zlora", "format_version": FORMAT_VERSION, "zlora_version": __version__}
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
