"""``zlora generate``: a base model plus weighted LoRA files through diffusers' own ZImagePipeline and LoRA loader,
so what it shows is what diffusers users get from the same files."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from PIL import Image

from zlora.config.base import MAX_SAMPLE_STEPS
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


def check_lora_file(path: str, shapes: dict[str, list[int]] | None = None) -> dict:
    """A LoRA that diffusers would load as nothing (another model's keys: it only warns), that does not fit the
    model (``shapes``: its transformer's weights) or that would turn the image black (NaN/inf weights) is refused
    before the pipeline is built."""
    from zlora.lora.bake import check_fits
    from zlora.lora.codecs import read_modules
    from zlora.lora.file import read_lora

    try:
        tensors, meta = read_lora(path)
        modules = read_modules(tensors, metadata=meta)
    except UserError as e:
        raise UserError(f"--lora {path}: {e}") from None
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise UserError(
            f"--lora {path}: {len(bad)} tensors hold NaN/inf (e.g. {bad[0]}); the image would be "
            "black. Use an earlier checkpoint of the run"
        )
    if shapes is not None:
        check_fits(modules, shapes, f"--lora {path}")
    return modules


def check_size(folder: Path, width: int, height: int, model: str) -> None:
    """Sides within what the model can place: its rotary position table covers ``axes_lens`` patches per side, so a
    larger image cannot be made (found in a millisecond from the configs, not after a minute of allocating)."""
    import json
    import logging

    tcfg = json.loads((folder / "transformer" / "config.json").read_text())
    vcfg = json.loads((folder / "vae" / "config.json").read_text())
    factor = 2 ** (len(vcfg.get("block_out_channels", [0, 0, 0, 0])) - 1) * tcfg.get("all_patch_size", [2])[0]
    limit = min(tcfg.get("axes_lens", [1024, 512, 512])[1:]) * factor
    for name, v in (("--width", width), ("--height", height)):
        if v > limit:
            raise UserError(
                f"{name} {v}: {model} places at most {limit} px per side (its position table); "
                f"use at most {limit}"
            )
    if model == "builtin:shapes":
        from zlora.shapes.world import SAMPLING

        if (width, height) != (SAMPLING["width"], SAMPLING["height"]):
            logging.getLogger(__name__).warning(
                "builtin:shapes learned %dx%d images; at %dx%d it draws little more than the background",
                SAMPLING["width"],
                SAMPLING["height"],
                width,
                height,
            )


def load_pipeline(
    model: str,
    loras: list[tuple[str, float]],
    device: torch.device,
    dtype: torch.dtype,
    blocks_to_swap: int = 0,
):
    from diffusers import ZImagePipeline

    ref = resolve_model(model)
    read = check_loras(ref.folder, loras)
    quiet_libraries()
    pipe = ZImagePipeline.from_pretrained(ref.folder, dtype=dtype, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    add_loras(pipe, loras, read)
    if blocks_to_swap < 0:
        raise UserError(f"--blocks-to-swap {blocks_to_swap}: must be 0 or more")
    if not blocks_to_swap:
        return pipe.to(device)
    from zlora.models.placement import placement_for

    placement = placement_for(device, blocks_to_swap=blocks_to_swap, checkpointing=False)
    placement.place(pipe.transformer, None)  # the same placement as training: swapped blocks stay on the host
    placement.attach(pipe.transformer)
    for part in (pipe.text_encoder, pipe.vae):
        part.to(device)
    return pipe


def check_loras(folder: Path, loras: list[tuple[str, float]]) -> list[dict]:
    """Each file checked against the model (``check_lora_file``) and its weight: the files' modules."""
    from zlora.lora.bake import model_shapes

    shapes = model_shapes(folder) if loras else None
    read = []
    for path, weight in loras:
        read.append(check_lora_file(path, shapes))
        if not math.isfinite(weight):
            raise UserError(f"--lora {path}:{weight}: the weight must be a finite number, e.g. 0.8")
    return read


def add_loras(pipe, loras: list[tuple[str, float]], read: list[dict]) -> None:
    """LoRA files through diffusers' loader as weighted adapters; LoKr / LoHa / DoRA files (which it does not load) added
    to the weights (``_merge_in_memory``): there is no switching those off afterwards, so a caller that needs the
    base model's images makes them before calling this."""
    names, weights = [], []
    for i, ((path, weight), modules) in enumerate(zip(loras, read, strict=True)):
        if any(m.kind != "lora" for m in modules.values()):
            _merge_in_memory(pipe.transformer, modules, weight)
            continue
        names.append(f"lora{i}")
        weights.append(weight)
        pipe.load_lora_weights(str(Path(path).expanduser()), adapter_name=names[-1])
    if names:
        pipe.set_adapters(names, adapter_weights=weights)


@torch.no_grad()
def _merge_in_memory(transformer, modules: dict, weight: float) -> None:
    """A LoKr / LoHa / DoRA file (diffusers loads LoRA only for Z-Image): ``weight x delta`` added to the weights in
    memory, in fp32, as ComfyUI's loader patches them (a DoRA delta computed on the weight it is added to)."""
    for name, m in modules.items():
        w = transformer.get_submodule(name).weight
        if m.kind == "dora":
            m = dataclasses.replace(m, base=w)
        w.copy_((w.float() + weight * m.delta().to(w.device)).to(w.dtype))


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
    blocks_to_swap: int = 0,
) -> Image.Image:
    for name, v in (("--width", width), ("--height", height)):
        if v < SIZE_MULTIPLE or v % SIZE_MULTIPLE:
            raise UserError(f"{name} {v} must be a positive multiple of {SIZE_MULTIPLE}")
    if not 1 <= steps <= MAX_SAMPLE_STEPS:
        raise UserError(f"--steps {steps}: must be 1 to {MAX_SAMPLE_STEPS} (Turbo: 9, De-Turbo/Base: 20-50)")
    if guidance < 0 or guidance != guidance:
        raise UserError(f"--guidance {guidance}: must be 0 (off) or positive, e.g. 3")
    dev = resolve_device(device, "--device")
    check_size(resolve_model(model).folder, width, height, model)
    pipe = load_pipeline(model, loras, dev, resolve_dtype(dtype, dev), blocks_to_swap)
    return pipe(
        prompt=prompt,
        negative_prompt=negative_prompt if guidance > 0 else None,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator(dev).manual_seed(seed),
    ).images[0]
