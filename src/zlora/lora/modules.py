"""The canonical form every LoRA tool works on: ``{module: LoraModule(A, B, alpha)}`` with the transformer's own
module names (``layers.0.attention.to_q``), ``A`` (rank, in), ``B`` (out, rank) and ``alpha`` (None: not stored,
which every loader reads as alpha = rank). The codecs (``codecs.py``) read and write files into and from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only tensor methods below: the codec table imports this without torch (fast CLI start-up)
    import torch


def lora_scale(alpha: float | None, rank: int) -> float:
    """The factor on ``B A``: alpha / rank, with a missing alpha read as alpha = rank (what diffusers, ComfyUI and
    kohya loaders all do). The one place this formula lives."""
    return (alpha if alpha is not None else rank) / rank


@dataclass
class LoraModule:
    A: torch.Tensor  # (rank, in)
    B: torch.Tensor  # (out, rank)
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def scale(self) -> float:
        return lora_scale(self.alpha, self.rank)

    def delta(self) -> torch.Tensor:
        """(alpha / rank) * B @ A in fp32, (out, in)."""
        return self.scale * (self.B.float() @ self.A.float())

    def delta_norm(self) -> float:
        """||(alpha/r) B A||_F via r x r Gram matrices: trace((B^T B)(A A^T)), no (out x in) product needed."""
        a, b = self.A.double(), self.B.double()
        return self.scale * float(((b.T @ b) * (a @ a.T)).sum().clamp_min(0).sqrt())

    def scaled(self, factor: float) -> LoraModule:
        """The same module with its delta times ``factor`` (B scaled: A and alpha stay, so a factor of 1 is this
        module itself, bit for bit)."""
        return (
            self
            if factor == 1.0
            else LoraModule(self.A, (self.B.float() * factor).to(self.B.dtype), self.alpha)
        )

    def folded(self) -> LoraModule:
        """alpha/rank multiplied into B (fp32, cast back) and alpha = rank: the same delta for a reader that assumes
        scale 1."""
        s = self.scale
        return LoraModule(
            self.A, self.B if s == 1 else (self.B.float() * s).to(self.B.dtype), float(self.rank)
        )

    def is_finite(self) -> bool:
        return bool(self.A.isfinite().all() and self.B.isfinite().all())
