"""The optimizers zlora offers: the library each comes from, the keyword arguments it takes (what
``train.optimizer_params`` may set; a test compares them with the real signatures), the package it needs, and its
name as the training guide and ai-toolkit's form write it. Torch-free, so the config, the web form and the
pre-flight check read it without loading torch; ``train.optim.make_optimizer`` builds from it."""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Optimizer:
    module: str
    cls: str
    package: str | None  # pip package (None: torch, transformers or zlora itself, always installed)
    label: str  # the guide's / ai-toolkit's name
    params: tuple[str, ...]  # keyword arguments besides lr (train.lr) and weight_decay (train.weight_decay)


_ADAM = ("betas", "eps", "amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused")
_BNB = ("betas", "eps", "amsgrad", "optim_bits", "min_8bit_size")
_PRODIGY = ("betas", "beta3", "eps", "decouple", "use_bias_correction", "safeguard_warmup", "d0", "d_coef")
_PRODIGY += ("growth_rate", "fsdp_in_use", "slice_p")

OPTIMIZERS = {
    "adamw": Optimizer("torch.optim", "AdamW", None, "AdamW", _ADAM),
    "adam": Optimizer("torch.optim", "Adam", None, "Adam", (*_ADAM, "decoupled_weight_decay")),
    "adamw8bit": Optimizer("bitsandbytes.optim", "AdamW8bit", "bitsandbytes", "AdamW8Bit", _BNB),
    "adam8bit": Optimizer("bitsandbytes.optim", "Adam8bit", "bitsandbytes", "Adam8Bit", _BNB),
    "ademamix8bit": Optimizer(
        "bitsandbytes.optim",
        "AdEMAMix8bit",
        "bitsandbytes",
        "AdEMAMix8Bit",
        ("betas", "alpha", "t_alpha", "t_beta3", "eps", "min_8bit_size"),
    ),
    "lion": Optimizer("lion_pytorch", "Lion", "lion-pytorch", "Lion", ("betas", "decoupled_weight_decay")),
    "lion8bit": Optimizer(
        "bitsandbytes.optim", "Lion8bit", "bitsandbytes", "Lion8Bit", ("betas", "min_8bit_size")
    ),
    "prodigy": Optimizer("prodigyopt", "Prodigy", "prodigyopt", "Prodigy", _PRODIGY),
    "prodigy8bit": Optimizer(
        "zlora.train.optim8", "Prodigy8bit", "prodigyopt", "Prodigy8Bit", (*_PRODIGY, "min_8bit_size")
    ),
    "adagrad": Optimizer(
        "torch.optim",
        "Adagrad",
        None,
        "Adagrad",
        ("lr_decay", "initial_accumulator_value", "eps", "foreach", "maximize", "differentiable", "fused"),
    ),
    "adafactor": Optimizer(
        "transformers.optimization",
        "Adafactor",
        None,
        "Adafactor",
        ("eps", "clip_threshold", "decay_rate", "beta1", "scale_parameter", "relative_step", "warmup_init"),
    ),
    "automagic": Optimizer(
        "zlora.train.automagic",
        "Automagic",
        None,
        "Automagic",
        ("min_lr", "max_lr", "lr_bump", "eps", "clip_threshold", "beta2"),
    ),
}
# ai-toolkit's other spellings (its UI and toolkit/optimizer.py)
ALIASES = {"adam8": "adam8bit", "adamw8": "adamw8bit", "prodigyopt": "prodigy"}


def params_problem(name: str, given: dict) -> str | None:
    """Why ``train.optimizer_params`` does not fit optimizer ``name`` (a key it does not take), else None."""
    opt = OPTIMIZERS[name]
    takes = ("weight_decay", *opt.params)
    for key in given:
        if key not in takes:
            close = difflib.get_close_matches(key, takes, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            if key == "lr":
                return f"{key!r}: set train.lr instead"
            return f"{name} takes no {key!r}; {hint}it takes: {', '.join(takes)}"
    return None


def problem(name: str, installed) -> str | None:
    """Why optimizer ``name`` cannot run here (``installed(package)`` says what is importable). Every optimizer
    runs on every device (bitsandbytes has CPU kernels), so only a missing package stops one."""
    opt = OPTIMIZERS[name]
    if opt.package and not installed(opt.package):
        return f"`train.optimizer` {name} needs the {opt.package} package: pip install {opt.package}"
    return None
