"""The training loss: per-sample flow-matching loss (``train.loss_type``), its weights over sigma, Differential
Guidance, the prior-regularisation target and Differential Output Preservation. ``Objective.loss(batch)`` is the
line a newcomer looks for: everything one batch's loss depends on is here."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zlora.config import Config
from zlora.config.schema import TrainConfig
from zlora.models import zimage
from zlora.train.curves import AITK_WEIGHTED_KNOTS, snr_weight


@dataclass
class Batch:
    """One process's share of a batch: entry indices, clean latents, noise, sigmas and caption embeddings (the
    entries' loss masks are read from the data by index)."""

    idx: list[int]
    x0: list[torch.Tensor]  # (C, h, w) each
    noise: list[torch.Tensor]  # (C, h, w) each
    sigmas: torch.Tensor  # (B,)
    caps: list[torch.Tensor]  # (L_i, D) each


def loss_weights(cfg: TrainConfig, sigmas: torch.Tensor) -> torch.Tensor:
    """Per-sample loss weights: ai-toolkit's table for ``weighted`` (``curves.AITK_WEIGHTED_KNOTS``, linearly
    interpolated on the device: no host sync), 6 s (1 - s) for ``mid_weighted`` (mean 1 over uniform s), else 1;
    times the Min-SNR weight with ``snr_gamma`` (``curves.snr_weight``)."""
    base = _type_weights(cfg, sigmas)
    return base * snr_weight(sigmas.float(), cfg.snr_gamma) if cfg.snr_gamma else base


def _type_weights(cfg: TrainConfig, sigmas: torch.Tensor) -> torch.Tensor:
    if cfg.timestep_type == "weighted":
        knots = torch.tensor(
            AITK_WEIGHTED_KNOTS, dtype=torch.float32, device=sigmas.device
        )  # (K, 2): t, weight
        t = (sigmas.float() * 1000).clamp(AITK_WEIGHTED_KNOTS[0][0], AITK_WEIGHTED_KNOTS[-1][0])
        hi = torch.searchsorted(knots[:, 0].contiguous(), t).clamp(1, len(knots) - 1)
        t0, t1, w0, w1 = knots[hi - 1, 0], knots[hi, 0], knots[hi - 1, 1], knots[hi, 1]
        return w0 + (w1 - w0) * (t - t0) / (t1 - t0)
    if cfg.timestep_type == "mid_weighted":
        return 6 * sigmas * (1 - sigmas)
    return torch.ones_like(sigmas)


def sample_loss(
    pred: torch.Tensor, target: torch.Tensor, cfg: TrainConfig, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean loss of one sample (fp32); with a loss mask (1, h, w) the mean weighted by it."""
    pred, target = pred.float(), target.float()
    if cfg.loss_type == "mae":
        err = F.l1_loss(pred, target, reduction="none")
    elif cfg.loss_type == "huber":
        err = F.huber_loss(pred, target, delta=cfg.huber_delta, reduction="none")
    else:
        err = F.mse_loss(pred, target, reduction="none")
    return masked_mean(err, mask)


def masked_mean(err: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``err`` (C, h, w) weighted by ``mask`` (1, h, w): each sample's loss is the mean over the
    pixels its mask keeps, so a small mask does not make a small loss (ai-toolkit divides by the batch's mean
    mask instead, which weighs a sample by its mask's area). An all-black mask at mask_min_value 0 gives 0."""
    if mask is None:
        return err.mean()
    mask = mask.to(err.dtype).expand_as(err)
    return (err * mask).sum() / mask.sum().clamp_min(1e-12)


def guided_target(pred: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    """Differential Guidance: ``pred + scale (target - pred)`` with pred detached, so the step overshoots the
    target by ``scale`` in the direction the model still has to go; scale 1 is the plain target."""
    p = pred.detach().float()
    return p + scale * (target - p)


class Objective:
    """The loss of a batch for the model as it is. ``adapters`` switches the user LoRA's weight (the training
    adapter stays on: the base model's prediction for prior_reg and DOP is the adapter-on, LoRA-off one)."""

    def __init__(self, cfg: Config, data, transformer: torch.nn.Module, adapters, dtype: torch.dtype):
        self.cfg, self.data, self.transformer, self.adapters, self.dtype = (
            cfg,
            data,
            transformer,
            adapters,
            dtype,
        )

    def loss(self, b: Batch) -> torch.Tensor:
        """Mean over the batch of each sample's mean loss (samples of different sizes weigh the same)."""
        cfg = self.cfg.train
        x_s = [zimage.noisy_latents(x, n, s) for x, n, s in zip(b.x0, b.noise, b.sigmas, strict=True)]
        pred = zimage.predict(self.transformer, x_s, b.sigmas, b.caps, self.dtype)
        target = [zimage.velocity_target(x, n) for x, n in zip(b.x0, b.noise, strict=True)]
        if cfg.do_differential_guidance:
            scale = cfg.differential_guidance_scale
            target = [guided_target(p, t, scale) for p, t in zip(pred, target, strict=True)]
        datasets = [self.cfg.datasets[self.data.entries[i].dataset] for i in b.idx]
        prior_at = [n for n, d in enumerate(datasets) if d.prior_reg]
        if prior_at:  # prior_reg: the base model's prediction is the target
            prior = self.prior([x_s[n] for n in prior_at], b.sigmas[prior_at], [b.caps[n] for n in prior_at])
            for n, q in zip(prior_at, prior, strict=True):
                target[n] = q
        masks = self.data.loss_masks(b.idx)
        losses = torch.stack([sample_loss(p, t, cfg, m) for p, t, m in zip(pred, target, masks, strict=True)])
        loss = (losses * loss_weights(cfg, b.sigmas)).mean()
        dop_at = [
            n for n, d in enumerate(datasets) if not d.is_reg
        ]  # a reg caption has no trigger to replace
        if cfg.diff_output_preservation and dop_at:
            dop = self.dop_loss([b.idx[n] for n in dop_at], [x_s[n] for n in dop_at], b.sigmas[dop_at])
            loss = loss + cfg.diff_output_preservation_multiplier * dop * (len(dop_at) / len(b.idx))
        return loss

    @torch.no_grad()
    def prior(self, x_s, sigmas, caps) -> list[torch.Tensor]:
        """The base model's prediction (user LoRA at weight 0: exactly the base, training adapter still on)."""
        self.adapters.train(user_weight=0.0)
        try:
            return zimage.predict(self.transformer, x_s, sigmas, caps, self.dtype)
        finally:
            self.adapters.train()

    def dop_loss(self, idx, x_s, sigmas) -> torch.Tensor:
        """Differential Output Preservation: on the class caption, the LoRA's prediction is pulled towards the base
        model's."""
        caps = [self.data.embedding(self.data.class_caption(self.data.entries[i])) for i in idx]
        prior = self.prior(x_s, sigmas, caps)
        pred = zimage.predict(self.transformer, x_s, sigmas, caps, self.dtype)
        return torch.stack(
            [torch.mean((p.float() - q.float()) ** 2) for p, q in zip(pred, prior, strict=True)]
        ).mean()
