"""The canonical form every LoRA tool works on: ``{module: LoraModule(A, B, alpha)}`` with the transformer's own
module names (``layers.0.attention.to_q``), ``A`` (rank, in), ``B`` (out, rank) and ``alpha`` (None: not stored,
which every loader reads as alpha = rank). The codecs (``codecs.py``) read and write files into and from it.
LoKr and LoHa modules (``LokrModule``, ``LohaModule``) have the same face for the tools: ``kind``, ``rank``,
``shape`` (out, in), ``delta()`` as ComfyUI computes it, ``delta_norm()``, ``scaled(f)`` (exact) and
``is_finite()``; tools that need a LoRA (resize, merge) take the SVD of their full delta."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zlora.errors import UserError

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
    kind = "lora"

    @property
    def shape(self) -> tuple[int, int]:
        return self.B.shape[0], self.A.shape[1]

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


def _product(full, a, b):
    return full.float() if full is not None else a.float() @ b.float()


@dataclass
class LokrModule:
    """LoKr (LyCORIS, peft ``LoKrConfig``, ComfyUI ``lokr.py``): delta = scale * kron(w1, w2), each factor stored
    whole (``w1``, (a, c)) or as a product (``w1_a @ w1_b``). The scale is ComfyUI's: alpha / (the rank of the
    decomposed factor) when a factor is decomposed and alpha is stored, else 1 (LyCORIS trains full-rank LoKr at
    scale 1)."""

    w1: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    w1_a: torch.Tensor | None = None
    w1_b: torch.Tensor | None = None
    w2_a: torch.Tensor | None = None
    w2_b: torch.Tensor | None = None
    alpha: float | None = None
    kind = "lokr"
    TENSORS = ("w1", "w2", "w1_a", "w1_b", "w2_a", "w2_b")

    @property
    def rank(self) -> int:
        """The rank of the decomposed factor (ComfyUI's ``dim``: w2's when both are), 0 when both are whole."""
        if self.w2 is None:
            return self.w2_b.shape[0]
        return self.w1_b.shape[0] if self.w1 is None else 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.alpha is not None and self.rank else 1.0

    @property
    def shape(self) -> tuple[int, int]:
        w1, w2 = self.factors()
        return w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _product(self.w1, self.w1_a, self.w1_b), _product(self.w2, self.w2_a, self.w2_b)

    def delta(self) -> torch.Tensor:
        import torch

        w1, w2 = self.factors()
        return self.scale * torch.kron(w1, w2)

    def delta_norm(self) -> float:
        """||kron(w1, w2)||_F = ||w1||_F ||w2||_F: no (out x in) product needed."""
        w1, w2 = self.factors()
        return abs(self.scale) * float(w1.double().norm() * w2.double().norm())

    def scaled(self, factor: float) -> LokrModule:
        """The delta times ``factor``: w1 (or w1_a) scaled, the rest as it is."""
        if factor == 1.0:
            return self
        name = "w1" if self.w1 is not None else "w1_a"
        t = getattr(self, name)
        return dataclasses.replace(self, **{name: (t.float() * factor).to(t.dtype)})

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by their LyCORIS key suffix (``lokr_w1``, ...)."""
        return {f"lokr_{n}": getattr(self, n) for n in self.TENSORS if getattr(self, n) is not None}

    def is_finite(self) -> bool:
        return all(t.isfinite().all() for t in self.tensors().values())


@dataclass
class LohaModule:
    """LoHa (LyCORIS, peft ``LoHaConfig``, ComfyUI ``loha.py``): delta = (alpha / rank) (w1_a @ w1_b) * (w2_a @
    w2_b), the Hadamard (element-wise) product of two rank-r products: rank up to r^2 for the parameters of 2r."""

    w1_a: torch.Tensor  # (out, r)
    w1_b: torch.Tensor  # (r, in)
    w2_a: torch.Tensor
    w2_b: torch.Tensor
    alpha: float | None = None
    kind = "loha"

    @property
    def rank(self) -> int:
        return self.w1_b.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.alpha is not None else 1.0

    @property
    def shape(self) -> tuple[int, int]:
        return self.w1_a.shape[0], self.w1_b.shape[1]

    def delta(self) -> torch.Tensor:
        return self.scale * (self.w1_a.float() @ self.w1_b.float()) * (self.w2_a.float() @ self.w2_b.float())

    def delta_norm(self) -> float:
        return float(self.delta().double().norm())

    def scaled(self, factor: float) -> LohaModule:
        if factor == 1.0:
            return self
        return dataclasses.replace(self, w1_a=(self.w1_a.float() * factor).to(self.w1_a.dtype))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"hada_{n}": getattr(self, n) for n in ("w1_a", "w1_b", "w2_a", "w2_b")}

    def is_finite(self) -> bool:
        return all(t.isfinite().all() for t in self.tensors().values())


@dataclass
class DoraModule:
    """DoRA (peft ``use_dora``, ComfyUI ``weight_decompose``): a LoRA ``A``, ``B``, ``alpha`` plus ``dora_scale``, and
    the weight it makes is ComfyUI's: with ``dora_scale`` (out, 1) (on the output axis, peft's and zlora's),
    ``W' = (W + s B A) * dora_scale / ||W||_row``; with (1, in) (LyCORIS's input axis), ``(W + s B A) *
    dora_scale / ||W + s B A||_column``. The delta depends on the base weight ``W``, which a file does not hold:
    ``base`` (a tensor, or a function that reads it: one module's weight in memory at a time) is attached by the
    tools (``--base``, else the file's ``base_model``; ``lora.bake.attach_base``); without it ``delta()`` says so."""

    A: torch.Tensor  # (rank, in)
    B: torch.Tensor  # (out, rank)
    alpha: float | None = None
    dora_scale: torch.Tensor | None = None  # (out, 1) or (1, in)
    base: object = None  # the base weight (out, in), or a function returning it
    kind = "dora"
    shape = LoraModule.shape
    rank = LoraModule.rank
    scale = LoraModule.scale

    @property
    def on_output(self) -> bool:
        return self.dora_scale.shape[0] == self.B.shape[0]

    def weight(self) -> torch.Tensor:
        if self.base is None:
            raise UserError(
                "a DoRA file's delta depends on the base model's weights: pass --base MODEL (the model it was "
                "trained on)"
            )
        w = self.base() if callable(self.base) else self.base
        return w.float()

    def _norm(self, w: torch.Tensor, calc: torch.Tensor) -> torch.Tensor:
        """The divisor ComfyUI uses (fp32, its eps added): the base rows' norm, or the new weight's columns'."""
        import torch

        norm = w.norm(dim=1, keepdim=True) if self.on_output else calc.norm(dim=0, keepdim=True)
        return norm + torch.finfo(torch.float32).eps

    def delta(self) -> torch.Tensor:
        """ComfyUI's ``W' - W`` at strength 1, in fp32."""
        w = self.weight()
        calc = w + self.scale * (self.B.float() @ self.A.float())
        return calc * (self.dora_scale.float() / self._norm(w, calc)) - w

    def delta_norm(self) -> float:
        return float(self.delta().double().norm())

    def scaled(self, factor: float) -> DoraModule:
        """ComfyUI's strength ``W + f (W' - W)`` as a DoRA module (output axis; exact): with r = dora_scale /
        ||W||, ``r' = 1 - f + f r`` per row, B times ``f r / r'`` and dora_scale = ``r' ||W||``."""
        if factor == 1.0:
            return self
        if not self.on_output:
            raise UserError(
                "scaling an input-axis DoRA file (LyCORIS style) is not exact; make a LoRA of it first "
                "(zlora lora resize --rank N --base MODEL)"
            )
        w = self.weight()
        norm = self._norm(w, w)
        r = self.dora_scale.float() / norm
        new = 1 - factor + factor * r
        if bool((new.abs() < 1e-6).any()):
            raise UserError(f"a scale of {factor:g} takes a DoRA row's magnitude to zero; choose another")
        B = (self.B.float() * (factor * r / new)).to(self.B.dtype)
        return dataclasses.replace(self, B=B, dora_scale=(new * norm).to(self.dora_scale.dtype))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"dora_scale": self.dora_scale}

    def is_finite(self) -> bool:
        return bool(self.A.isfinite().all() and self.B.isfinite().all() and self.dora_scale.isfinite().all())


AnyModule = LoraModule | LokrModule | LohaModule | DoraModule
# The key suffixes of each type's tensors in a file (after ``<module>.``), for the codecs.
LYCORIS_SUFFIXES = {
    **{f"lokr_{n}": ("lokr", n) for n in LokrModule.TENSORS},
    **{f"hada_{n}": ("loha", n) for n in ("w1_a", "w1_b", "w2_a", "w2_b")},
}


def _complete(kind: str, parts: dict) -> bool:
    """LoKr: each factor whole or both halves of its product; LoHa: all four matrices."""
    if kind == "lokr":
        return all(w in parts or {f"{w}_a", f"{w}_b"} <= parts.keys() for w in ("w1", "w2"))
    return {"w1_a", "w1_b", "w2_a", "w2_b"} <= parts.keys()


def read_lycoris(name: str, p: dict, alpha_of) -> LokrModule | LohaModule:
    """A module's tensors by key kind (``lokr_w1``, ``hada_w1_a``, ``alpha``, ...) -> its LoKr / LoHa module; a
    damaged module (mixed types, missing or misfitting factors) is named."""
    found = {LYCORIS_SUFFIXES[k] for k in p if k in LYCORIS_SUFFIXES}
    kinds = {k for k, _ in found}
    if len(kinds) > 1 or any(k in p for k in ("A", "B")):
        raise UserError(f"module {name} mixes LoRA, LoKr and LoHa tensors; the file is damaged")
    (kind,) = kinds
    parts = {n: p[f"{'lokr' if kind == 'lokr' else 'hada'}_{n}"] for _, n in found}
    if not _complete(kind, parts):
        raise UserError(
            f"module {name}: its {kind} tensors are incomplete ({', '.join(sorted(parts))}); the file is damaged"
        )
    if any(t.ndim != 2 for t in parts.values()):
        raise UserError(
            f"module {name}: {kind} weights must be 2-D matrices (convolution {kind} is not supported)"
        )
    alpha = float(p["alpha"]) if "alpha" in p else alpha_of(name)
    module = (LokrModule if kind == "lokr" else LohaModule)(**parts, alpha=alpha)
    try:
        module.delta_norm()
    except RuntimeError as e:
        raise UserError(
            f"module {name}: its {kind} factors do not fit together ({e}); the file is damaged"
        ) from None
    return module


def read_module(name: str, p: dict, alpha_of) -> AnyModule:
    """A module's tensors by key kind (``A``, ``B``, ``alpha``, ``dora_scale``, ``lokr_w1``, ...) -> its canonical
    module; ``alpha_of(name)`` gives the alpha of a module without an ``alpha`` tensor. A damaged module is named."""
    if any(k in LYCORIS_SUFFIXES for k in p):
        return read_lycoris(name, p, alpha_of)
    if "A" not in p or "B" not in p:
        raise UserError(f"module {name} has {'no lora_A/down' if 'A' not in p else 'no lora_B/up'} weight")
    if p["A"].ndim != 2 or p["B"].ndim != 2:
        raise UserError(
            f"module {name}: LoRA weights must be 2-D matrices (got {list(p['A'].shape)} and "
            f"{list(p['B'].shape)}; convolution LoRAs are not supported)"
        )
    if p["A"].numel() == 0 or p["B"].numel() == 0:
        raise UserError(
            f"module {name}: an empty (zero-size) LoRA weight ({list(p['A'].shape)} and "
            f"{list(p['B'].shape)}); the file is damaged"
        )
    if p["A"].shape[0] != p["B"].shape[1]:
        raise UserError(
            f"module {name}: lora_A/down has rank {p['A'].shape[0]} but lora_B/up has rank "
            f"{p['B'].shape[1]}; the file is damaged"
        )
    alpha = float(p["alpha"]) if "alpha" in p else alpha_of(name)
    if "dora_scale" not in p:
        return LoraModule(p["A"], p["B"], alpha)
    out, n_in = p["B"].shape[0], p["A"].shape[1]
    if list(p["dora_scale"].shape) not in ([out, 1], [1, n_in]):
        raise UserError(
            f"module {name}: dora_scale is {list(p['dora_scale'].shape)}, not [{out}, 1] (output axis) or "
            f"[1, {n_in}] (input axis); the file is damaged"
        )
    return DoraModule(p["A"], p["B"], alpha, p["dora_scale"])
