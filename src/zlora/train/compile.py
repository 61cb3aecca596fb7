"""Regional ``torch.compile`` of the transformer's repeated blocks."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def compile_blocks(
    transformer: torch.nn.Module, setting: bool | str, device: torch.device, blocks: list | None = None
) -> bool:
    """``torch.compile`` each repeated transformer block (diffusers' ``compile_repeated_blocks``: one compiled
    graph reused by all 30 blocks, so warm-up stays short). ``auto`` compiles on CUDA only. A block that fails to
    compile runs eager (dynamo's ``suppress_errors``), with torch's warning, instead of ending the run. ``blocks``: only
    these (layer offloading: a swapped block's weights change place at every call, so it runs eager; the resident
    blocks are compiled)."""
    if setting is False or (setting == "auto" and device.type != "cuda"):
        return False
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    try:
        if blocks is None:
            transformer.compile_repeated_blocks(fullgraph=False)
        else:
            for block in blocks:
                block.compile(fullgraph=False)
    except Exception as e:  # an old diffusers or torch: no regional compile, train eager
        log.warning("train.compile: could not compile (%s: %s); training eager", type(e).__name__, e)
        return False
    log.info("train.compile: the repeated transformer blocks are compiled (the first steps warm up)")
    return True
