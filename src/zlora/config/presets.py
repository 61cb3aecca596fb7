"""What the config and ``zlora generate`` fill in when not told: the architecture presets (``model.arch``), the
Turbo training adapters' short names, and each model's sampling defaults. Torch-free: the web UI reads them."""

from __future__ import annotations

# What ``model.arch`` fills in when the config leaves it unset.
ARCH_PRESETS = {
    "zimage:turbo": {
        "name_or_path": "Tongyi-MAI/Z-Image-Turbo",
        "assistant_lora_path": "v2",
        "sample_steps": 9,
        "guidance_scale": 0.0,
    },
    "zimage:deturbo": {
        "name_or_path": "ostris/Z-Image-De-Turbo",
        "assistant_lora_path": None,
        "sample_steps": 25,
        "guidance_scale": 3.0,
    },
    "zimage": {
        "name_or_path": "Tongyi-MAI/Z-Image",
        "assistant_lora_path": None,
        "sample_steps": 30,
        "guidance_scale": 4.0,
    },
}


def sampling_defaults(model: str) -> dict:
    """What generate (CLI and UI) uses when not told: Turbo's 9 steps without CFG at 1024², builtin:shapes' own
    settings. Here, not in generate.py, so the UI server can read it without importing torch."""
    if model == "builtin:shapes":
        from zlora.shapes.world import SAMPLING

        return dict(SAMPLING)
    return {"steps": 9, "guidance": 0.0, "width": 1024, "height": 1024}


def fill_sampling(model: str, given: dict) -> dict:
    """steps / guidance / width / height from ``given``, the model's defaults where it has None or nothing."""
    return {k: v if given.get(k) is None else given[k] for k, v in sampling_defaults(model).items()}


TURBO_ADAPTERS = {
    f"v{v}": f"ostris/zimage_turbo_training_adapter/zimage_turbo_training_adapter_v{v}.safetensors"
    for v in (1, 2)
}


# What the web form's New Training Job starts from (a field the user sets wins; the config file's own defaults
# stay the schema's). For a real model: the training guide's baseline for a Turbo LoRA (its sections 6 and 7:
# Turbo + training adapter v2, rank 16, lr 1e-4, 2,500 steps, AdamW8Bit, weighted timesteps, 512/768/1024 with
# cached latents and text embeddings, 1024² previews every 250 steps; 8 sampling steps is Turbo's 9 here, where
# steps count scheduler steps). ``datasets.*`` applies to every dataset.
GUIDE_BASELINE = {
    "model.arch": "zimage:turbo",
    "network.linear": 16,
    "network.linear_alpha": 16,
    "train.lr": 1e-4,
    "train.steps": 2500,
    "train.optimizer": "adamw8bit",
    "train.weight_decay": 1e-4,
    "train.timestep_type": "weighted",
    "train.cache_text_embeddings": True,
    "datasets.*.resolution": [512, 768, 1024],
    "datasets.*.cache_latents": True,
    "sample.width": 1024,
    "sample.height": 1024,
    "sample.sample_every": 250,
}
# builtin:shapes keeps its own small world: configs/quickstart.yaml's settings (64 px, 400 steps).
SHAPES_BASELINE = {
    "model.dtype": "fp32",
    "network.linear": 8,
    "network.linear_alpha": 8,
    "train.steps": 400,
    "train.batch_size": 8,
    "train.lr": 5e-3,
    "train.timestep_type": "shift",
    "train.gradient_checkpointing": False,
    "datasets.*.resolution": [64],
    "datasets.*.cache_latents": True,
    "sample.width": 64,
    "sample.height": 64,
    "sample.sample_every": 100,
    "sample.sample_steps": 20,
    "sample.guidance_scale": 1.0,
    "save.save_every": 100,
}
QUANTIZE_BELOW_GIB = 24  # the guide: float8 at 16 GB, bf16 (no quantization) from 24 GB up
LOW_VRAM_BELOW_GIB = 14  # the guide's "VRAM 不足" fix: Low VRAM (blocks swapped, `auto`) on 8-12 GB cards


def new_job_defaults(name_or_path: str | None, memory_gib: float | None) -> dict:
    """The New Training Job form's starting values for this base model on this machine (``memory_gib``: its first
    CUDA device's memory, None without one). The guide's AdamW8Bit everywhere (bitsandbytes runs it on
    the CPU too). A GPU under 24 GiB quantizes to float8, as the guide advises at 16 GB; under 14 GiB Low VRAM too."""
    if name_or_path == "builtin:shapes":
        return dict(SHAPES_BASELINE)
    if name_or_path and name_or_path.startswith("builtin:"):
        return {}
    out = dict(GUIDE_BASELINE)
    if memory_gib is not None and memory_gib < QUANTIZE_BELOW_GIB:
        out.update({"model.quantize": True, "model.qtype": "float8", "model.quantize_te": True})
    if memory_gib is not None and memory_gib < LOW_VRAM_BELOW_GIB:
        out["model.low_vram"] = True
    return out
