"""Optimizers and learning-rate schedules, from the libraries that implement them."""

from __future__ import annotations

import importlib
import math

import torch

from zlora.config.optimizers import OPTIMIZERS, problem
from zlora.config.schema import SCHEDULER_PARAMS, TrainConfig
from zlora.errors import UserError


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]):
    opt = OPTIMIZERS[cfg.optimizer]
    try:
        cls = getattr(importlib.import_module(opt.module), opt.cls)
    except ImportError:
        raise UserError(problem(cfg.optimizer, lambda package: False)) from None
    kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, **cfg.optimizer_params}
    kwargs = {k: tuple(v) if k in ("betas", "eps") and isinstance(v, list) else v for k, v in kwargs.items()}
    if cfg.optimizer == "adafactor":  # a fixed lr, as the other optimizers: no relative step or warm-up init
        kwargs = {"scale_parameter": False, "relative_step": False, "warmup_init": False, **kwargs}
    try:
        return cls(params, **kwargs)
    except (TypeError, ValueError, AssertionError) as e:  # lion-pytorch checks its betas with assert
        why = str(e) or f"it refuses {cfg.optimizer_params}"
        raise UserError(f"`train.optimizer_params` for {cfg.optimizer}: {why}") from None


# train.lr_scheduler -> the lr_scheduler_params it takes (validated when the config is read)
SCHEDULERS = SCHEDULER_PARAMS


def make_scheduler(cfg: TrainConfig, optimizer, total_steps: int):
    """The LR schedule. diffusers' schedules where they are the formula (warm-up, num_cycles, power come from the
    config alone); torch's LinearLR for ``linear_ramp`` (ai-toolkit's ``linear``); a cosine with a floor and its
    own descent length (ai-toolkit's ``cosine``) when ``eta_min`` / ``cosine_decay_steps`` are given; ``step``
    multiplies the lr by gamma every step_size steps after the warm-up."""
    params, warmup = dict(cfg.lr_scheduler_params), cfg.lr_warmup_steps
    name = cfg.lr_scheduler
    if name == "step":
        step_size = int(params.get("step_size", max(1, total_steps // 3)))
        return _warmup_then_step(optimizer, warmup, step_size, float(params.get("gamma", 0.5)))
    if name == "linear_ramp":  # torch's LinearLR, as ai-toolkit builds it (total_iters: the run)
        return torch.optim.lr_scheduler.LinearLR(
            optimizer,
            start_factor=float(params.get("start_factor", 1 / 3)),
            end_factor=float(params.get("end_factor", 1.0)),
            total_iters=int(params.get("total_iters", total_steps)),
        )
    if name == "cosine" and params:
        floor = float(params.get("eta_min", 0.0)) / cfg.lr
        decay = max(1, int(params.get("cosine_decay_steps", total_steps - warmup)))

        def cosine(step: int) -> float:
            if step < warmup:
                return step / max(1, warmup)
            progress = min(1.0, (step - warmup) / decay)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return _lambda(optimizer, cosine)
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=warmup,
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


def _lambda(optimizer, factor):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
