"""Where the transformer's weights live while it trains and samples. Setup places the model through ``place``;
previews and ``zlora generate`` sample inside ``placement.sampling()``. Today one strategy, every block resident on
the compute device; layer offloading is another strategy here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from zlora.models.quantize import quantize_weights


class Resident:
    """Every weight on the compute device (quantized there when asked)."""

    def __init__(self, device: torch.device):
        self.device = device

    def place(self, transformer: torch.nn.Module, qtype: str | None) -> torch.nn.Module:
        transformer = transformer.to(self.device)
        if qtype:
            quantize_weights(transformer, qtype, "model.quantize")
        return transformer

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        """Previews and generation see the model as training does: nothing to move."""
        yield


def placement_for(device: torch.device) -> Resident:
    return Resident(device)
