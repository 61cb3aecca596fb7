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
