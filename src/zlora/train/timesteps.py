"""Sigma sampling for flow-matching training (sigma = noise level in [0, 1])."""

from __future__ import annotations

import torch


def sample_sigmas(kind: str, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    if kind == "linear":  # uniform
        return torch.rand(n, generator=generator, device=device)
    if kind == "sigmoid":  # logit-normal(0, 1): most samples in mid noise, as in SD3 / Flux training
        return torch.sigmoid(torch.randn(n, generator=generator, device=device))
    raise ValueError(f"unknown timestep_type {kind!r}")
