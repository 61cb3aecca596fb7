"""The training objective's knobs: how sigma (noise level in [0, 1]) is drawn, per-sample loss weights, the loss
type, and Differential Guidance. Every curve here is named in the config docstrings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zlora.config.schema import TrainConfig


def flow_shift(s: torch.Tensor, shift: float) -> torch.Tensor:
    """The scheduler's shift of noise levels: s -> shift s / (1 + (shift - 1) s)."""
    return shift * s / (1 + (shift - 1) * s)


def sample_sigmas(cfg: TrainConfig, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``n`` sigmas: drawn by ``timestep_type``, bent by ``timestep_bias``, mapped into [min, max]/1000."""
    kind = cfg.timestep_type
    if kind == "sigmoid":  # logit-normal(0, 1): most samples in mid noise, as in SD3 / Flux training
        s = torch.sigmoid(torch.randn(n, generator=generator, device=device))
    else:  # linear, shift and weighted start uniform
        s = torch.rand(n, generator=generator, device=device)
    if kind == "shift":  # the flow-matching shift the inference scheduler uses: mass moves to high noise
        s = flow_shift(s, cfg.timestep_shift)
    if cfg.timestep_bias == "high_noise":
        s = 1 - (1 - s) ** 2
    elif cfg.timestep_bias == "low_noise":
        s = s**2
    lo, hi = cfg.min_timestep / 1000, cfg.max_timestep / 1000
    return lo + (hi - lo) * s


def loss_weights(cfg: TrainConfig, sigmas: torch.Tensor) -> torch.Tensor:
    """Per-sample loss weights: 6 s (1 - s) for ``weighted`` (mean 1 over uniform s), else 1."""
    if cfg.timestep_type == "weighted":
        return 6 * sigmas * (1 - sigmas)
    return torch.ones_like(sigmas)


def sample_loss(pred: torch.Tensor, target: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Mean loss of one sample (fp32)."""
    pred = pred.float()
    if cfg.loss_type == "mae":
        return F.l1_loss(pred, target)
    if cfg.loss_type == "huber":
        return F.huber_loss(pred, target, delta=cfg.huber_delta)
    return F.mse_loss(pred, target)


def guided_target(pred: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    """Differential Guidance: ``pred + scale (target - pred)`` with pred detached, so the step overshoots the
    target by ``scale`` in the direction the model still has to go; scale 1 is the plain target."""
    p = pred.detach().float()
    return p + scale * (target - p)
