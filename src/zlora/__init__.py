"""zlora: LoRA training and tooling for the Z-Image family of diffusion transformers."""

__version__ = "0.1.0"

from zlora.utils.quiet import quiet_torchao as _quiet_torchao

_quiet_torchao()  # before peft / diffusers import torchao (see utils/quiet.py)
