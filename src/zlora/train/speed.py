"""Speed and memory helpers of the training step: regional compilation and peak-memory readings."""

from __future__ import annotations

import logging
import resource
import sys

import torch

log = logging.getLogger(__name__)


def compile_blocks(transformer: torch.nn.Module, setting: bool | str, device: torch.device) -> bool:
    """``torch.compile`` each repeated transformer block (diffusers' ``compile_repeated_blocks``: one compiled
    graph reused by all 30 blocks, so warm-up stays short). ``auto`` compiles on CUDA only. A block that fails to
    compile runs eager (dynamo's ``suppress_errors``), with torch's warning, instead of ending the run."""
    if setting is False or (setting == "auto" and device.type != "cuda"):
        return False
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    try:
        transformer.compile_repeated_blocks(fullgraph=False)
    except Exception as e:  # an old diffusers or torch: no regional compile, train eager
        log.warning("train.compile: could not compile (%s: %s); training eager", type(e).__name__, e)
        return False
    log.info("train.compile: the repeated transformer blocks are compiled (the first steps warm up)")
    return True


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory so far: allocated device memory on CUDA, the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


class MasterWeights:
    """fp32 master copies of the LoRA weights the model holds in its compute dtype (bf16/fp16).

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


def trainable_params(transformer: torch.nn.Module, precision: str, dtype: torch.dtype):
    """(masters or None, {model parameter name: the tensor the optimizer steps}) for the user LoRA. With
    ``precision == "auto"`` and a low-precision base, the model's LoRA weights (the frozen training adapter's too)
    move to ``dtype`` and fp32 masters are what trains."""
    lora = {n: p for n, p in transformer.named_parameters() if p.requires_grad}
    if precision != "auto" or dtype == torch.float32:
        return None, lora
    with torch.no_grad():  # the frozen training adapter computes in the same dtype
        for n, p in transformer.named_parameters():
            if "lora_" in n and n not in lora:
                p.data = p.data.to(dtype)
    masters = MasterWeights(list(lora.values()), dtype)
    return masters, dict(zip(lora, masters.master, strict=True))
