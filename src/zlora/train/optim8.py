"""Prodigy8bit, ai-toolkit's name for Prodigy with its optimizer states kept in 8 bits (its
``toolkit/optimizers/prodigy_8bit.py`` copies prodigyopt's step and stores each state in its own ``Auto8bitTensor``).
Here the step is prodigyopt's own (``Prodigy``, the maintained implementation) and only the storage changes:
between steps ``exp_avg``, ``exp_avg_sq`` and ``s`` of a tensor with at least ``min_8bit_size`` elements are held
as bitsandbytes' blockwise dynamic 8-bit quantization (the format of its 8-bit Adam states; 256-value blocks, an
fp32 absmax per block), about a quarter of fp32. ``p0`` (the starting weights Prodigy's step size is measured
from) stays fp32. The first step equals Prodigy's exactly; later steps differ by the states' 8-bit rounding.
The packed states are plain tensors, so checkpoints hold them and a resume continues bit-identically."""

from __future__ import annotations

import torch
from prodigyopt import Prodigy

PACKED = {"exp_avg": True, "exp_avg_sq": False, "s": True}  # state -> signed
BLOCK = 256


class Prodigy8bit(Prodigy):
    def __init__(self, params, min_8bit_size: int = 4096, **kwargs):
        super().__init__(params, **kwargs)
        self.min_8bit_size = min_8bit_size
        self._codes: dict[bool, torch.Tensor] = {}

    def _code(self, signed: bool, device) -> torch.Tensor:
        import bitsandbytes.functional as F

        if signed not in self._codes:
            self._codes[signed] = F.create_dynamic_map(signed=signed)
        return self._codes[signed].to(device)

    def _unpack(self) -> None:
        import bitsandbytes.functional as F

        for state in self.state.values():
            for key, signed in PACKED.items():
                if f"{key}.q" in state:
                    q, absmax = state.pop(f"{key}.q"), state.pop(f"{key}.absmax")
                    code = self._code(signed, q.device)
                    state[key] = F.dequantize_blockwise(q, absmax=absmax.float(), code=code, blocksize=BLOCK)

    def _pack(self) -> None:
        import bitsandbytes.functional as F

        for state in self.state.values():
            for key, signed in PACKED.items():
                t = state.get(key)
                if isinstance(t, torch.Tensor) and t.numel() >= self.min_8bit_size:
                    q, qs = F.quantize_blockwise(
                        t.float().contiguous(), code=self._code(signed, t.device), blocksize=BLOCK
                    )
                    state[f"{key}.q"], state[f"{key}.absmax"] = q, qs.absmax
                    del state[key]

    def load_state_dict(self, state_dict) -> None:
        """torch casts every state tensor of a float parameter to its dtype; the packed bytes go back to uint8
        (0..255 are exact in any float dtype, so nothing is lost)."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            for key in PACKED:
                if f"{key}.q" in state:
                    state[f"{key}.q"] = state[f"{key}.q"].to(torch.uint8)
                    state[f"{key}.absmax"] = state[f"{key}.absmax"].float()

    @torch.no_grad()
    def step(self, closure=None):
        self._unpack()
        try:
            return super().step(closure)
        finally:
            self._pack()
