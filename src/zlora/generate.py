"""``zlora generate``: a base model plus weighted LoRA files through diffusers' own ZImagePipeline and LoRA loader,
so what it shows is what diffusers users get from the same files."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from zlora.errors import UserError
from zlora.models.load import resolve_device, resolve_dtype, resolve_model
from zlora.models.zimage import SIZE_MULTIPLE


def load_pipeline(model: str, loras: list[tuple[str, float]], device: torch.device, dtype: torch.dtype):
    from diffusers import ZImagePipeline

    ref = resolve_model(model)
    pipe = ZImagePipeline.from_pretrained(ref.folder, torch_dtype=dtype, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    names = []
    for i, (path, _) in enumerate(loras):
        p = Path(path).expanduser()
        if p.is_dir():
            inside = ", ".join(sorted(f.name for f in p.glob("*.safetensors"))) or "none"
            raise UserError(f"--lora {path} is a folder; point it at one of its .safetensors files: {inside}")
        if p.suffix.lower() != ".safetensors" or not p.is_file():
            raise UserError(f"--lora {path}: not a .safetensors file (pickle files are never loaded)")
        names.append(f"lora{i}")
        pipe.load_lora_weights(str(p), adapter_name=names[-1])
    if names:
        pipe.set_adapters(names, adapter_weights=[w for _, w in loras])
    return pipe.to(device)


def generate_image(
    *, model: str, loras: list[tuple[str, float]], prompt: str, negative_prompt: str = "", steps: int = 9,
    guidance: float = 0.0, seed: int = 42, width: int = 1024, height: int = 1024, device: str = "auto",
    dtype: str = "auto",
) -> Image.Image:  # fmt: skip
    for name, v in (("--width", width), ("--height", height)):
        if v < SIZE_MULTIPLE or v % SIZE_MULTIPLE:
            raise UserError(f"{name} {v} must be a positive multiple of {SIZE_MULTIPLE}")
    dev = resolve_device(device)
    pipe = load_pipeline(model, loras, dev, resolve_dtype(dtype, dev))
    return pipe(
        prompt=prompt, negative_prompt=negative_prompt if guidance > 0 else None, height=height, width=width,
        num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator(dev).manual_seed(seed),
    ).images[0]  # fmt: skip
