"""Library notes that do not apply to zlora, silenced before the libraries are imported (no heavy imports here)."""

from __future__ import annotations

import logging
import warnings


def quiet_torchao() -> None:
    """torchao, imported by peft and diffusers whenever it is installed, reports optional C++/Triton kernels built
    for other torch versions, torch notes its enum registration, and diffusers notes checkpoint types we never load;
    peft notes that a TorchaoLoraLinear cannot merge, and zlora never merges into the base. bitsandbytes (imported
    by peft too) reports its optional 4-bit CPU kernels package, which zlora's 8-bit optimizers do not use."""
    for name in (
        "bitsandbytes.backends.cpu.ops",
        "torch.utils._pytree",
        "torchao",
        "torchao.kernel.intmm",
        "diffusers.quantizers.torchao.torchao_quantizer",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="TorchaoLoraLinear was instantiated without")
