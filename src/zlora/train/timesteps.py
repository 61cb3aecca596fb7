"""How the noise level sigma in [0, 1] of each training sample is drawn (``train.timestep_type``, bias, range).
Every curve here is named in the config docstrings and drawn by `zlora config timesteps` (``curves.py``, which
holds the bends both share); the loss side (weights, loss types) is in ``losses.py``."""

from __future__ import annotations

import torch

from zlora.config.schema import TrainConfig
from zlora.train.curves import anchor_draws, bend, flow_shift

__all__ = ["flow_shift", "sample_sigmas"]


def sample_sigmas(cfg: TrainConfig, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``n`` sigmas: drawn by ``timestep_type``, bent by ``timestep_bias``, mapped into [min, max]/1000."""
    if (
        cfg.timestep_type == "sigmoid"
    ):  # logit-normal(0, 1): most samples in mid noise, as in SD3 / Flux training
        s = torch.sigmoid(torch.randn(n, generator=generator, device=device))
    elif cfg.timestep_type == "turbo_anchors":  # the sampler's own sigmas, jittered (curves.anchor_draws)
        u = torch.rand(3, n, generator=generator, device=device)
        z = torch.randn(n, generator=generator, device=device)
        s = anchor_draws(cfg, u[0], z, u[1], u[2])
    else:  # linear, shift and the weighted types start uniform
        s = torch.rand(n, generator=generator, device=device)
    return bend(s, cfg)
