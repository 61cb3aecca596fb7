"""Resolve a model reference to a local diffusers folder and load its components with the real loaders."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from zlora.errors import UserError
from zlora.hub.manifest import HubSettings, hub_settings
from zlora.hub.refs import file_of, model_folder_of

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, field: str = "job.device") -> torch.device:
    from zlora.config.base import DEVICE_PATTERN

    if not re.fullmatch(DEVICE_PATTERN, name):
        raise UserError(f"`{field}` {name!r} is not a device; use auto, cpu, cuda or cuda:N (e.g. cuda:1)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"`{field}` is {name!r} but no CUDA device is available; use cpu or auto")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(
            f"`{field}` is {name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return dev


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


@dataclass(frozen=True)
class ResolvedModel:
    reference: str
    folder: Path
    revision: str | None = None


def resolve_model(ref: str, settings: HubSettings | None = None) -> ResolvedModel:
    """``builtin:tiny`` | ``builtin:shapes`` | local diffusers folder | hub id ``org/name[@revision]`` -> local folder. A hub model
    complete in the models folder or the HF cache is used without any network request."""
    if ref == "builtin:tiny":
        from zlora.models.tiny import builtin_tiny_path

        return ResolvedModel(ref, builtin_tiny_path())
    if ref == "builtin:shapes":
        return ResolvedModel(ref, builtin_shapes_path())
    found = model_folder_of(ref, settings or hub_settings())
    return ResolvedModel(ref, *found)


def builtin_shapes_path() -> Path:
    """The pretrained demo model shipped inside the package (examples/pretrain_shapes.py made it)."""
    import zlora.shapes

    folder = Path(zlora.shapes.__file__).parent / "model"
    if not (folder / "model_index.json").is_file():
        raise UserError(
            f"builtin:shapes is missing from this install ({folder}); reinstall zlora, or make it "
            "with: python examples/pretrain_shapes.py"
        )
    return folder


def resolve_file_ref(ref: str, field: str, settings: HubSettings | None = None) -> Path:
    """A ``.safetensors`` FILE: a local path, or a hub file ``org/repo/path/file.safetensors``."""
    return file_of(ref, field, settings or hub_settings())


def quiet_libraries() -> None:
    """No per-shard / per-component progress bars from transformers and diffusers (imported only when a model
    is loaded, which keeps `zlora` start-up short), no notes from torchao that do not apply."""
    from zlora.utils.quiet import quiet_torchao

    quiet_torchao()
    from diffusers.utils import logging as df_logging
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    df_logging.disable_progress_bar()


@dataclass
class Components:
    transformer: torch.nn.Module
    text_encoder: torch.nn.Module | None
    tokenizer: object | None
    vae: torch.nn.Module
    scheduler: object


def load_text_encoder(folder: Path, dtype: torch.dtype) -> tuple[object, torch.nn.Module]:
    """(tokenizer, frozen Qwen3 text encoder in eval mode) on the CPU."""
    from transformers import AutoTokenizer, Qwen3Model

    quiet_libraries()
    text_encoder = Qwen3Model.from_pretrained(folder / "text_encoder", dtype=dtype, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    return tokenizer, text_encoder.requires_grad_(False).eval()


def load_components(
    folder: Path, dtype: torch.dtype, device: torch.device | None = None, text_encoder: bool = True
) -> Components:
    """Each component through its own library's loader (safetensors only), frozen, in eval mode; moved to
    ``device`` if given (the trainer moves them itself, so the text encoder and transformer never share the GPU).
    ``text_encoder=False`` leaves the text encoder and tokenizer out (the trainer loads them only when some
    caption is not cached yet)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel

    quiet_libraries()
    transformer = ZImageTransformer2DModel.from_pretrained(
        folder, subfolder="transformer", dtype=dtype, use_safetensors=True
    )
    tokenizer, text_encoder = load_text_encoder(folder, dtype) if text_encoder else (None, None)
    # The VAE stays in fp32: it is small (84 M) and encoding latents in low precision costs accuracy.
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=torch.float32, use_safetensors=True)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
    for m in (transformer, text_encoder, vae):
        if m is not None:
            m.requires_grad_(False).eval()
            if device is not None:
                m.to(device)
    return Components(transformer, text_encoder, tokenizer, vae, scheduler)


def make_pipeline(components: Components):
    """A ZImagePipeline over already-loaded components (the text encoder may be None: pass prompt_embeds)."""
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline(
        scheduler=components.scheduler,
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        transformer=components.transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
