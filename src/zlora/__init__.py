"""zlora: LoRA training and tooling for the Z-Image family of diffusion transformers."""

__version__ = "0.1.0"
