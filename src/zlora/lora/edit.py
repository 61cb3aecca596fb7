"""Editing LoRAs in canonical form: per-component / per-layer scaling, merging, rank reduction.

Scaling multiplies B (the delta is linear in B), so unchosen modules stay bit-identical. Merging without a rank
concatenates ranks, so the merged delta equals the weighted sum of deltas. Rank reduction takes an SVD of the
delta from its factors (QR of B and A^T, then an SVD of a small k x k matrix), never forming the (out x in) delta.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from zlora.errors import UserError
from zlora.lora.modules import AnyModule, LoraModule
from zlora.vocab import MAIN_BLOCKS, SCALE_GROUPS, split_block

COMPONENTS = {option: modules for option, (modules, _) in SCALE_GROUPS.items()}  # option -> module suffixes


def layer_of(name: str) -> int | None:
    """The index of a main ``layers.N`` block a module lies in (None: a refiner or outside the blocks)."""
    where = split_block(name)
    return where[1] if where and where[0] == MAIN_BLOCKS else None


def parse_layer_spec(spec: str | None) -> dict[int, float]:
    """``"0-9:0.5,20-29:1.2"`` -> {layer: multiplier}."""
    out: dict[int, float] = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?:(-?[\d.]+(?:e-?\d+)?)", part)
        if not m:
            raise UserError(f"--layers entry {part!r} must look like 0-9:0.5 or 12:1.2")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise UserError(f"--layers entry {part!r}: range end is below its start")
        twice = sorted(set(range(lo, hi + 1)) & set(out))
        if twice:
            raise UserError(
                f"--layers entry {part!r} overlaps an earlier range at layer(s) "
                f"{_ranges(twice)}; give each layer one multiplier"
            )
        for i in range(lo, hi + 1):
            out[i] = float(m.group(3))
    return out


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    out: list[str] = []
    for n in sorted(numbers):
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


@dataclass
class Multipliers:
    ratio: float = 1.0
    components: dict[str, float] | None = None  # keys of COMPONENTS
    layers: dict[int, float] | None = None

    def for_module(self, name: str) -> float:
        factor = self.ratio
        for comp, value in (self.components or {}).items():
            if name.endswith(COMPONENTS[comp]):
                factor *= value
        layer = layer_of(name)
        if layer is not None and self.layers and layer in self.layers:
            factor *= self.layers[layer]
        return factor


def check_multipliers(modules: dict[str, LoraModule], mult: Multipliers, source: str) -> None:
    """A component or layer that the LoRA does not have would be silently ignored: name it instead."""
    have = sorted({n for n in map(layer_of, modules) if n is not None})
    missing = sorted(set(mult.layers or {}) - set(have))
    if missing:
        raise UserError(
            f"{source}: --layers names layer(s) {_ranges(missing)}, which this LoRA does not have "
            f"(it has layers {_ranges(have) or 'none'})"
        )
    for comp in mult.components or {}:
        if not any(name.endswith(COMPONENTS[comp]) for name in modules):
            present = [
                c.replace("_", "-") for c, suf in COMPONENTS.items() if any(n.endswith(suf) for n in modules)
            ]
            raise UserError(
                f"{source}: --{comp.replace('_', '-')} matches no module of this LoRA "
                f"(it has: {', '.join(present) or 'none of the named components'})"
            )


def scale(modules: dict[str, LoraModule], mult: Multipliers) -> dict[str, LoraModule]:
    return {name: m.scaled(mult.for_module(name)) for name, m in modules.items()}


def merge(
    inputs: list[tuple[dict[str, AnyModule], float]], rank: int | None = None
) -> tuple[dict[str, LoraModule], dict[str, float]]:
    """LoRA parts: an exact merge (ranks concatenated, each input's weight and alpha/rank folded into its B, alpha
    = new rank), then with ``rank`` an SVD down to it. A module with a LoKr or LoHa part: the SVD of the weighted
    sum of the full deltas at ``rank`` (needed then). Returns the modules and the kept energy of each SVD."""
    names = sorted({n for mods, _ in inputs for n in mods})
    out, kept = {}, {}
    for name in names:
        parts = [(mods[name], w) for mods, w in inputs if name in mods]
        shapes = {tuple(m.shape) for m, _ in parts}
        if len(shapes) > 1:
            raise UserError(f"cannot merge {name}: shapes differ between inputs ({sorted(shapes)})")
        if all(m.kind == "lora" for m, _ in parts):
            A = torch.cat([m.A.float() for m, _ in parts], dim=0)
            B = torch.cat([m.B.float() * (w * m.scale) for m, w in parts], dim=1)
            out[name] = LoraModule(A, B, float(A.shape[0]))
            continue
        if rank is None:
            kind = next(m.kind for m, _ in parts if m.kind != "lora")
            raise UserError(
                f"{name} is a {kind} module: a merge makes a LoRA of it through the SVD of the full delta; "
                "choose its rank with --rank N"
            )
        out[name], kept[name] = svd_lora(sum(w * m.delta().double() for m, w in parts), rank)
    if rank is not None:
        lora_only = {n: m for n, m in out.items() if n not in kept}
        reduced, lora_kept = reduce_rank(lora_only, rank)
        out.update(reduced)
        kept.update(lora_kept)
    return out, kept


def svd_lora(delta: torch.Tensor, rank: int, dtype: torch.dtype = torch.float32) -> tuple[LoraModule, float]:
    """The best rank-``rank`` LoRA of a full delta (out, in) and the share of its energy it keeps."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    total = float((s**2).sum())
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    B, A = u[:, :r] * root, root[:, None] * vh[:r]
    return LoraModule(A.to(dtype), B.to(dtype), float(r)), float(
        (s[:r] ** 2).sum()
    ) / total if total > 0 else 1.0


def reduce_rank(modules: dict[str, AnyModule], rank: int) -> tuple[dict[str, LoraModule], dict[str, float]]:
    """Best rank-``rank`` approximation of each delta (a LoKr / LoHa module: of its full delta); returns the
    modules and the kept energy (sum of kept squared singular values over the total) per module."""
    out, kept = {}, {}
    for name, m in modules.items():
        if m.kind != "lora":
            dtype = m.B.dtype if m.kind == "dora" else next(iter(m.tensors().values())).dtype
            out[name], kept[name] = svd_lora(m.delta(), rank, dtype)
            continue
        B = m.B.double() * m.scale  # (out, k)
        A = m.A.double()  # (k, in)
        qb, rb = torch.linalg.qr(B)  # B = qb rb
        qa, ra = torch.linalg.qr(A.T)  # A^T = qa ra
        u, s, vh = torch.linalg.svd(rb @ ra.T)  # delta = qb (rb ra^T) qa^T
        total = float((s**2).sum())
        r = min(rank, s.numel())
        kept[name] = float((s[:r] ** 2).sum()) / total if total > 0 else 1.0
        root = s[:r].sqrt()
        new_B = (qb @ u[:, :r]) * root  # (out, r)
        new_A = root[:, None] * (vh[:r] @ qa.T)  # (r, in)
        out[name] = LoraModule(new_A.to(m.A.dtype), new_B.to(m.B.dtype), float(r))
    return out, kept


def parse_input_multipliers(text: str) -> tuple[str, Multipliers]:
    """``FILE[:WEIGHT][[qk=0.5,adaln=0,layers=0-9:0.5;20-29:1.2]]`` -> (FILE[:WEIGHT], multipliers).

    The bracket holds `scale`'s options for this one input; ``layers`` ranges are separated by ``;``."""
    if not text.endswith("]") or "[" not in text:
        return text, Multipliers()
    head, _, body = text[:-1].rpartition("[")
    comps: dict[str, float] = {}
    layers: dict[int, float] = {}
    for item in filter(None, (x.strip() for x in body.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key == "layers" and sep:
            layers = parse_layer_spec(value.replace(";", ","))
        elif key in COMPONENTS and sep:
            try:
                comps[key] = float(value)
            except ValueError:
                raise UserError(f"{text}: {key}={value!r} is not a number") from None
        else:
            raise UserError(f"{text}: {item!r} is not one of {', '.join(COMPONENTS)}, layers (as key=value)")
    if "ffn" in comps and any(w in comps for w in ("w1", "w2", "w3")):
        raise UserError(f"{text}: use either ffn or w1/w2/w3, not both")
    return head, Multipliers(components=comps, layers=layers)
