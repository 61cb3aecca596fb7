"""``zlora generate``: a base model plus weighted LoRA files through diffusers' own ZImagePipeline and LoRA loader,
so what it shows is what diffusers users get from the same files."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from zlora.errors import UserError
from zlora.models.load import quiet_libraries, resolve_device, resolve_dtype, resolve_model
from zlora.models.zimage import SIZE_MULTIPLE

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def image_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise UserError(f"-o {path}: give an image file name ending in {', '.join(IMAGE_FORMATS)}")
    return IMAGE_FORMATS[suffix]


def save_image(image: Image.Image, path: Path, fmt: str, settings: dict) -> None:
    """The image with its settings embedded (PNG text chunk ``parameters``, JSON), so it can be reproduced."""
    import json

    from PIL.PngImagePlugin import PngInfo

    if fmt != "PNG":
        image.save(path, format=fmt)
        return
    info = PngInfo()
    info.add_text("parameters", json.dumps(settings, sort_keys=True))
    image.save(path, format=fmt, pnginfo=info)


def check_lora_file(path: str) -> None:
    """A LoRA that diffusers would load as nothing (another model's keys: it only warns) or that would turn the
    image black (NaN/inf weights) is refused before the pipeline is built."""
    from zlora.lora.codecs import detect_format
    from zlora.lora.file import read_lora

    try:
        tensors, _ = read_lora(path)
        detect_format(list(tensors))
    except UserError as e:
        raise UserError(f"--lora {path}: {e}") from None
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise UserError(
            f"--lora {path}: {len(bad)} tensors hold NaN/inf (e.g. {bad[0]}); the image would be "
            "black. Use an earlier checkpoint of the run"
        )


def load_pipeline(model: str, loras: list[tuple[str, float]], device: torch.device, dtype: torch.dtype):
    from diffusers import ZImagePipeline

    for path, _ in loras:
        check_lora_file(path)
    ref = resolve_model(model)
    quiet_libraries()
    pipe = ZImagePipeline.from_pretrained(ref.folder, dtype=dtype, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    names = []
    for i, (path, _) in enumerate(loras):
        p = Path(path).expanduser()
        names.append(f"lora{i}")
        pipe.load_lora_weights(str(p), adapter_name=names[-1])
    if names:
        pipe.set_adapters(names, adapter_weights=[w for _, w in loras])
    return pipe.to(device)


def generate_image(
    *,
    model: str,
    loras: list[tuple[str, float]],
    prompt: str,
    negative_prompt: str = "",
    steps: int = 9,
    guidance: float = 0.0,
    seed: int = 42,
    width: int = 1024,
    height: int = 1024,
    device: str = "auto",
    dtype: str = "auto",
) -> Image.Image:
    for name, v in (("--width", width), ("--height", height)):
        if v < SIZE_MULTIPLE or v % SIZE_MULTIPLE:
            raise UserError(f"{name} {v} must be a positive multiple of {SIZE_MULTIPLE}")
    if steps < 1:
        raise UserError(f"--steps {steps}: must be at least 1 (Turbo: 9, De-Turbo/Base: 20-50)")
    if guidance < 0 or guidance != guidance:
        raise UserError(f"--guidance {guidance}: must be 0 (off) or positive, e.g. 3")
    dev = resolve_device(device)
    pipe = load_pipeline(model, loras, dev, resolve_dtype(dtype, dev))
    return pipe(
        prompt=prompt,
        negative_prompt=negative_prompt if guidance > 0 else None,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator(dev).manual_seed(seed),
    ).images[0]
