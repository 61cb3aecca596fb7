"""The optimizers zlora offers: the library each comes from, what it needs to run, and its name as the training
guide and ai-toolkit's form write it. Torch-free, so the web form and the pre-flight check read it without loading
torch; ``optim.make_optimizer`` builds from it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Optimizer:
    module: str
    cls: str
    package: str | None  # pip package (None: torch or transformers, always installed)
    needs_cuda: bool  # bitsandbytes' 8-bit optimizers
    label: str  # the guide's / ai-toolkit's name


OPTIMIZERS = {
    "adamw": Optimizer("torch.optim", "AdamW", None, False, "AdamW"),
    "adamw8bit": Optimizer("bitsandbytes.optim", "AdamW8bit", "bitsandbytes", True, "AdamW8Bit"),
    "lion": Optimizer("lion_pytorch", "Lion", "lion-pytorch", False, "Lion"),
    "lion8bit": Optimizer("bitsandbytes.optim", "Lion8bit", "bitsandbytes", True, "Lion8Bit"),
    "prodigy": Optimizer("prodigyopt", "Prodigy", "prodigyopt", False, "Prodigy"),
    "adafactor": Optimizer("transformers.optimization", "Adafactor", None, False, "Adafactor"),
}


def runs_on(device_type: str) -> list[str]:
    """The optimizers that run on a device of this type (``cuda``, ``cpu``, ``mps``)."""
    return [k for k, o in OPTIMIZERS.items() if device_type == "cuda" or not o.needs_cuda]


def problem(name: str, device_type: str, installed) -> str | None:
    """Why optimizer ``name`` cannot run on ``device_type`` (``installed(package)`` says what is importable)."""
    opt = OPTIMIZERS[name]
    if opt.needs_cuda and device_type != "cuda":
        return (
            f"`train.optimizer` {name} needs a CUDA GPU (bitsandbytes); on {device_type} use one of: "
            f"{', '.join(runs_on(device_type))}"
        )
    if opt.package and not installed(opt.package):
        return f"`train.optimizer` {name} needs the {opt.package} package: pip install {opt.package}"
    return None
