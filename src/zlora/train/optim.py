"""Optimizers and learning-rate schedules, from the libraries that implement them."""

from __future__ import annotations

import importlib

import torch

from zlora.config.schema import TrainConfig
from zlora.errors import UserError

# name -> (module, class, pip package, needs CUDA)
OPTIMIZERS = {
    "adamw": ("torch.optim", "AdamW", None, False),
    "adamw8bit": ("bitsandbytes.optim", "AdamW8bit", "bitsandbytes", True),
    "lion": ("lion_pytorch", "Lion", "lion-pytorch", False),
    "lion8bit": ("bitsandbytes.optim", "Lion8bit", "bitsandbytes", True),
    "prodigy": ("prodigyopt", "Prodigy", "prodigyopt", False),
    "adafactor": ("transformers.optimization", "Adafactor", None, False),
}


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter], device: torch.device):
    module, name, package, needs_cuda = OPTIMIZERS[cfg.optimizer]
    if needs_cuda and device.type != "cuda":
        usable = ", ".join(k for k, v in OPTIMIZERS.items() if not v[3])
        raise UserError(
            f"`train.optimizer` {cfg.optimizer} needs a CUDA GPU (bitsandbytes); on {device.type} use "
            f"one of: {usable}"
        )
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError:
        raise UserError(
            f"`train.optimizer` {cfg.optimizer} needs the {package} package: pip install {package}"
        ) from None
    kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, **cfg.optimizer_params}
    if cfg.optimizer == "adafactor":  # a fixed lr, as the other optimizers: no relative step or warm-up init
        kwargs = {"scale_parameter": False, "relative_step": False, "warmup_init": False, **kwargs}
    try:
        return cls(params, **kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"`train.optimizer_params` for {cfg.optimizer}: {e}") from None


# train.lr_scheduler -> the lr_scheduler_params it takes
SCHEDULERS = {
    "constant": set(),
    "constant_with_warmup": set(),
    "linear": set(),
    "cosine": set(),
    "cosine_with_restarts": {"num_cycles"},
    "polynomial": {"power"},
    "step": {"step_size", "gamma"},
}


def make_scheduler(cfg: TrainConfig, optimizer, total_steps: int):
    """diffusers' schedules (warm-up, num_cycles, power come from the config alone: no code edits for restarts);
    ``step`` multiplies the lr by gamma every step_size steps after the warm-up."""
    params = dict(cfg.lr_scheduler_params)
    allowed = SCHEDULERS[cfg.lr_scheduler]
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise UserError(
            f"`train.lr_scheduler_params` {unknown} do not apply to {cfg.lr_scheduler}; "
            f"it takes: {', '.join(sorted(allowed)) or 'nothing'}"
        )
    if cfg.lr_scheduler == "step":
        return _warmup_then_step(
            optimizer,
            cfg.lr_warmup_steps,
            int(params.get("step_size", max(1, total_steps // 3))),
            float(params.get("gamma", 0.5)),
        )
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=cfg.lr_warmup_steps,
        num_training_steps=total_steps,
        num_cycles=int(params.get("num_cycles", 1)),
        power=float(params.get("power", 1.0)),
    )


def _warmup_then_step(optimizer, warmup: int, step_size: int, gamma: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return gamma ** ((step - warmup) // step_size)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
