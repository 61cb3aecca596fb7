"""LoRA precision: with a bf16/fp16 base the network computes in that dtype while the optimizer, gradient clipping,
EMA and checkpoints work on fp32 master weights."""

from __future__ import annotations

import torch


class MasterWeights:
    """fp32 master copies of the trained weights the model holds in its compute dtype (bf16/fp16).

    peft keeps LoRA weights in fp32 by default, so every activation entering a LoRA module is cast to fp32 and the
    result back (thousands of casts per step). Here the model's LoRA weights are in the compute dtype, and the
    optimizer, gradient clipping, EMA and checkpoints work on fp32 masters: after backward the gradients move to the
    masters, after the optimizer step the masters are copied back (one cast per weight per step)."""

    def __init__(self, model_params: list[torch.nn.Parameter], dtype: torch.dtype):
        self.model = model_params
        self.master = [torch.nn.Parameter(p.detach().float().clone()) for p in model_params]
        with torch.no_grad():
            for p in model_params:
                p.data = p.data.to(dtype)

    def grads_to_master(self) -> None:
        for p, m in zip(self.model, self.master, strict=True):
            m.grad = None if p.grad is None else p.grad.float()
            p.grad = None

    @torch.no_grad()
    def to_model(self) -> None:
        for p, m in zip(self.model, self.master, strict=True):
            p.copy_(m)


def trainable_params(
    trained: dict[str, torch.nn.Parameter],
    frozen: list[torch.nn.Parameter],
    precision: str,
    dtype: torch.dtype,
) -> tuple[MasterWeights | None, dict[str, torch.nn.Parameter]]:
    """(masters or None, {model parameter name: the tensor the optimizer steps}) for the ``trained`` network. With
    ``precision == "auto"`` and a low-precision base, the network's weights (and the ``frozen`` training adapter's)
    move to ``dtype`` and fp32 masters are what trains."""
    if precision != "auto" or dtype == torch.float32:
        return None, trained
    with torch.no_grad():  # the frozen training adapter computes in the same dtype
        for p in frozen:
            p.data = p.data.to(dtype)
    masters = MasterWeights(list(trained.values()), dtype)
    return masters, dict(zip(trained, masters.master, strict=True))
