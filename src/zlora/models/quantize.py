"""Quantized frozen weights through torchao (weight-only float8 / int8): the linear weights of the transformer's
blocks are stored quantized and computed in the model's dtype; peft then puts its LoRA layers (its torchao-aware
``TorchaoLoraLinear``) on top, in full precision. torchao is the PyTorch team's quantization library and the one
peft and diffusers integrate with, which is why it is used here rather than a hand-written quantizer."""

from __future__ import annotations

import logging

import torch

from zlora.errors import UserError
from zlora.utils.quiet import quiet_torchao
from zlora.vocab import IN_BLOCK

log = logging.getLogger(__name__)


def quantize_weights(
    module: torch.nn.Module, qtype: str, what: str, blocks_only: bool = True, quiet: bool = False
) -> tuple[int, int]:
    """Quantize ``module``'s Linear weights in place (only inside the transformer's blocks when ``blocks_only``:
    embedders and the final layer are small and sensitive). Returns the bytes before and after; ``quiet``: the
    caller logs (one block of many)."""
    if qtype == "none":
        return 0, 0
    quiet_torchao()
    try:
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise UserError(f"`{what}` needs torchao: pip install torchao (or set {what}=false)") from None
    config = {"float8": Float8WeightOnlyConfig, "int8": Int8WeightOnlyConfig}[qtype]()
    before = weight_bytes(module)

    def pick(m: torch.nn.Module, fqn: str) -> bool:
        return isinstance(m, torch.nn.Linear) and (not blocks_only or IN_BLOCK.match(fqn) is not None)

    quantize_(module, config, filter_fn=pick)
    after = weight_bytes(module)
    if not quiet:
        log.info("%s: %s weights, %.1f MiB -> %.1f MiB", what, qtype, before / 2**20, after / 2**20)
    return before, after


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes the parameters hold, counting a quantized tensor by its inner data (values + scales)."""
    total = 0
    for p in module.parameters():
        t = p.data if isinstance(p, torch.nn.Parameter) else p
        if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor:
            names, _ = t.__tensor_flatten__()
            total += sum(getattr(t, n).numel() * getattr(t, n).element_size() for n in names)
        else:
            total += t.numel() * t.element_size()
    return total
