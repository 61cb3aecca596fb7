"""The validation loss: the flow-matching loss of the model as it is on held-out images (``validation.datasets``)
at fixed noise levels (``validation.sigmas``) with fixed noise per image (seeded from ``validation.seed`` and the
image's index), so every evaluation sees the very same inputs and the curve shows fitting, then over-fitting. The
images go through the training data path (buckets, latent cache, caption cache), the model runs as in training
(the Turbo adapter on, the LoRA's current weights, no EMA), without gradients."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from zlora.config import Config
from zlora.data.loader import TrainData, held_out_images
from zlora.models import zimage
from zlora.train.losses import masked_mean

log = logging.getLogger(__name__)


class Validation:
    def __init__(self, cfg: Config, model_folder: Path, device: torch.device, dtype: torch.dtype):
        self.cfg = cfg.validation
        own = len(cfg.validation.datasets)
        split = held_out_images(cfg) if cfg.validation.split else [set() for _ in cfg.datasets]
        # validation.datasets whole, then the training datasets' held-out images (validation.split)
        held_out = cfg.model_copy(update={"datasets": [*cfg.validation.datasets, *cfg.datasets]})
        self.data = TrainData(
            held_out, model_folder, device, dtype, keep=lambda i, p: i < own or p in split[i - own]
        )
        self.device, self.dtype = device, dtype

    def prepare(self, vae, load_encoder) -> None:
        """Encode (or read from the caches) the held-out latents and captions, with the training data's."""
        self.data.prepare_latents(vae)
        self.data.prepare_text(load_encoder)

    def due(self, step: int, last: int) -> bool:
        return bool(self.cfg.every) and (step % self.cfg.every == 0 or step == last)

    @torch.no_grad()
    def loss(self, transformer, vae) -> float:
        """Mean MSE between prediction and ``x0 - noise`` over every held-out sample and noise level (weighted by
        the sample's loss mask, if its dataset has masks)."""
        total, n = 0.0, 0
        for i, entry in enumerate(self.data.entries):
            x0 = self.data.latents([i], vae)[0]
            cap = self.data.embedding(entry.caption)
            g = torch.Generator(self.device).manual_seed(self.cfg.seed * 1_000_003 + i)
            noise = torch.randn(x0.shape, generator=g, device=self.device)
            target = zimage.velocity_target(x0, noise).float()
            sigmas = torch.tensor(self.cfg.sigmas, device=self.device)
            x_s = [zimage.noisy_latents(x0, noise, s) for s in sigmas]
            pred = zimage.predict(transformer, x_s, sigmas, [cap] * len(sigmas), self.dtype)
            mask = self.data.loss_masks([i])[0]
            total += sum(masked_mean((p.float() - target) ** 2, mask).item() for p in pred)
            n += len(pred)
        return total / max(n, 1)
