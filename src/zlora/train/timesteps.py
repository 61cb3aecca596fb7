"""How the noise level sigma in [0, 1] of each training sample is drawn (``train.timestep_type``, bias, range).
Every curve here is named in the config docstrings; the loss side (weights, loss types) is in ``losses.py``."""

from __future__ import annotations

import torch

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
