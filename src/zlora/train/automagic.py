"""Automagic, ai-toolkit's optimizer (``toolkit/optimizers/automagic.py`` by ostris), written here from its
algorithm because no maintained library ships it and ai-toolkit's users pick it by name:

- an Adafactor second moment: ``v = beta2 v + (1 - beta2)(g² + eps)``, factored into row and column means for
  matrices (``rsqrt(row / mean(row)) ⊗ rsqrt(col)``), whole for vectors; ``u = g / sqrt(v)``, divided by
  ``max(1, rms(u) / clip_threshold)``;
- a learning rate per weight (the ``lr_mask``, starting at ``lr``): each step it grows by ``lr_bump`` where the
  sign of ``u`` agrees with the previous step's and shrinks by ``lr_bump`` where it does not, clamped to
  ``[min_lr, max_lr]``; the first step compares with an all-negative sign, as ai-toolkit's does;
- ``w -= lr_mask · (u + weight_decay · w)``.

The group ``lr`` is only the starting value: the schedule does not scale the steps (as in ai-toolkit). A start lr
above 1e-3 becomes 1e-6, with a warning, as in ai-toolkit. Differences: ai-toolkit keeps the mask in 8 bits (its
``Auto8bitTensor``), here it is fp32 (exact, 4 bytes per LoRA weight); its random "parameter swapping" is left out.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


class Automagic(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        lr: float = 1e-6,
        min_lr: float = 1e-7,
        max_lr: float = 1e-3,
        lr_bump: float = 1e-6,
        eps=(1e-30, 1e-3),
        clip_threshold: float = 1.0,
        beta2: float = 0.999,
        weight_decay: float = 0.0,
    ):
        if lr > 1e-3:
            log.warning("automagic: a start lr of %g is far too high; using 1e-6 (as ai-toolkit does)", lr)
            lr = 1e-6
        defaults = dict(
            lr=lr,
            min_lr=min_lr,
            max_lr=max_lr,
            lr_bump=lr_bump,
            eps=eps,
            clip_threshold=clip_threshold,
            beta2=beta2,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)
        self.start_lr = lr

    @staticmethod
    def _rms(t: torch.Tensor) -> torch.Tensor:
        return t.norm(2) / t.numel() ** 0.5

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            eps = group["eps"][0] if isinstance(group["eps"], (tuple, list)) else group["eps"]
            beta2 = group["beta2"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                state = self.state[p]
                factored = g.dim() >= 2
                if not state:
                    state["step"] = 0
                    state["lr_mask"] = torch.full(
                        p.shape, self.start_lr, dtype=torch.float32, device=p.device
                    )
                    state["polarity"] = torch.zeros(p.shape, dtype=torch.bool, device=p.device)
                    if factored:
                        state["row"] = torch.zeros(p.shape[:-1], dtype=torch.float32, device=p.device)
                        state["col"] = torch.zeros(
                            p.shape[:-2] + p.shape[-1:], dtype=torch.float32, device=p.device
                        )
                    else:
                        state["sq"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
                state["step"] += 1
                sq = g * g + eps
                if factored:
                    row, col = state["row"], state["col"]
                    row.mul_(beta2).add_(sq.mean(dim=-1), alpha=1 - beta2)
                    col.mul_(beta2).add_(sq.mean(dim=-2), alpha=1 - beta2)
                    r = (row / row.mean(dim=-1, keepdim=True)).rsqrt().unsqueeze(-1)
                    update = r * col.unsqueeze(-2).rsqrt() * g
                else:
                    state["sq"].mul_(beta2).add_(sq, alpha=1 - beta2)
                    update = state["sq"].rsqrt() * g
                update.div_((self._rms(update) / group["clip_threshold"]).clamp_(min=1.0))
                polarity = update > 0
                bump = group["lr_bump"]
                mask = torch.where(
                    polarity == state["polarity"], state["lr_mask"] + bump, state["lr_mask"] - bump
                )
                mask.clamp_(min=group["min_lr"], max=group["max_lr"])
                state["polarity"], state["lr_mask"] = polarity, mask
                w = p if p.dtype in (torch.float32, torch.float64) else p.float()  # fp32 masters: in place
                if group["weight_decay"]:
                    w.sub_(w * group["weight_decay"] * mask)
                w.sub_(update * mask)
                if w is not p:
                    p.copy_(w)
        return loss
