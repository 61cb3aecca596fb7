"""LoRA key formats for Z-Image: detection, reading into one canonical form, and writing each format.

Canonical form: ``{module: LoraModule(A, B, alpha)}`` with diffusers module names (``layers.0.attention.to_q``),
``A`` (rank, in), ``B`` (out, rank) and ``alpha`` (None: not stored, which every loader reads as alpha = rank).

Formats, named by who reads them (``FORMAT_ALIASES`` maps the consumer's name to the format):
- ``zlora``: ``diffusion_model.<module>.lora_A/B.weight`` + ``.alpha`` (ai-toolkit writes the same keys without
  alpha). diffusers and ComfyUI load it fully.
- ``diffusers``: ``transformer.<module>.lora_A/B.weight`` (also ``base_model.model.`` prefixes from peft). B is
  written already multiplied by alpha/rank and alpha = rank goes in the ``lora_adapter_metadata`` header, so a
  reader that sees the tensors only (ComfyUI) applies the same delta as diffusers.
- ``kohya``: ``lora_unet_<module with _>.lora_down/up.weight`` + ``.alpha`` (musubi-tuner, sd-scripts), with
  attention named after ComfyUI's modules: fused ``attention_qkv`` and ``attention_out`` (split ``to_q`` ...
  names are read too).
- ``comfy-fused`` (alias ``comfy``): like zlora, with q/k/v fused into ``attention.qkv`` and ``to_out.0`` named
  ``attention.out``: every patch is keyed by a whole ComfyUI weight, so its bypass loader takes all of it.
- ``foreign``: with ``--allow-foreign``, a LoRA for another model is read and written with its keys as they are.

Conversions keep the delta ``(alpha/rank) B A`` of every module; the A/B split changes where a format needs it
(diffusers folds the scale into B, fused formats stack q/k/v). diffusers' own converter only reads (into peft's
in-memory form), so writing each format is done here.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

import torch

from zlora.errors import UserError

FORMATS = ("zlora", "diffusers", "kohya", "comfy-fused")
# What to hand to which tool: the names `lora convert --to` (and the web UI) offer.
FORMAT_ALIASES = {"comfy": "comfy-fused", "comfyui": "comfy-fused", "ai-toolkit": "zlora", "musubi": "kohya"}
# Top-level modules of ZImageTransformer2DModel: a LoRA whose modules lie elsewhere is for another model.
ZIMAGE_ROOTS = re.compile(
    r"^(layers|noise_refiner|context_refiner)[._]\d+[._]|^(all_x_embedder|all_final_layer|t_embedder|cap_embedder"
    r"|x_embedder|final_layer)([._]|$)"
)
# diffusers reads a peft LoraConfig from this safetensors metadata key. A `transformer.*` file must not hold
# `.alpha` tensors: they send diffusers down its non-diffusers converter, which then fails to find the modules.
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
_PROTECTED = {  # underscore names inside kohya's flattened module names
    "to_q": "to_q",
    "to_k": "to_k",
    "to_v": "to_v",
    "to_out_0": "to_out.0",
    "feed_forward": "feed_forward",
    "noise_refiner": "noise_refiner",
    "context_refiner": "context_refiner",
    "adaLN_modulation": "adaLN_modulation",
}
_FOREIGN = [
    (
        re.compile(r"^lora_te\d?_|(down|up|mid)_blocks?[._]|input_blocks|output_blocks|middle_block"),
        "SDXL / SD1.5",
    ),
    (
        re.compile(r"double_blocks|single_blocks|single_transformer_blocks|transformer_blocks\.\d+\.attn"),
        "Flux",
    ),
]


@dataclass
class LoraModule:
    A: torch.Tensor  # (rank, in)
    B: torch.Tensor  # (out, rank)
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def delta(self) -> torch.Tensor:
        """(alpha / rank) * B @ A in fp32."""
        scale = (self.alpha if self.alpha is not None else self.rank) / self.rank
        return scale * (self.B.float() @ self.A.float())


def resolve_format(name: str) -> str:
    fmt = FORMAT_ALIASES.get(name, name)
    if fmt not in FORMATS:
        raise UserError(f"unknown format {name!r}; choose one of {', '.join([*FORMATS, *FORMAT_ALIASES])}")
    return fmt


def _stem(key: str) -> str:
    """A key without its format prefix and LoRA suffix: the module as the model names it."""
    for prefix in ("lora_unet_", "diffusion_model.", "transformer.", "base_model.model."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    return _split_key(key)[0] if key.endswith(_SUFFIXES) else key


def detect_format(keys: list[str], allow_foreign: bool = False) -> str:
    """The key format of a Z-Image LoRA; a LoRA for another model (SDXL, Flux, ...) is an error naming it, or,
    with ``allow_foreign``, the format ``foreign`` (keys kept as they are)."""
    if not keys:
        raise UserError("the LoRA file holds no tensors")
    lora_keys = [k for k in keys if k.endswith(_SUFFIXES)]
    if not lora_keys:
        raise UserError(f"no LoRA weights in the file (keys like {keys[0]}); is it a model, not a LoRA?")
    foreign = [k for k in lora_keys if not ZIMAGE_ROOTS.match(_stem(k))]
    if foreign:
        if allow_foreign:
            return "foreign"
        arch = next(
            (
                a
                for pattern, a in _FOREIGN
                if sum(bool(pattern.search(k)) for k in foreign) > len(foreign) // 2
            ),
            "another model",
        )
        raise UserError(
            f"this is a LoRA for {arch}, not Z-Image ({len(foreign)} of {len(lora_keys)} modules, "
            f"e.g. {foreign[0]}); pass --allow-foreign to process it anyway"
        )
    if any(k.startswith("lora_unet_") for k in keys):
        return "kohya"
    if any(k.startswith("diffusion_model.") for k in keys):
        return "comfy-fused" if any(".attention.qkv." in k for k in keys) else "zlora"
    if any(k.startswith(("transformer.", "base_model.model.")) for k in keys):
        return "diffusers"
    raise UserError(f"unknown LoRA key format (keys like {keys[0]}); expected one of {', '.join(FORMATS)}")


def _kohya_module(flat: str) -> str:
    """``layers_0_attention_to_out_0`` -> ``layers.0.attention.to_out.0`` (protected names keep underscores)."""
    out, parts, i = [], flat.split("_"), 0
    while i < len(parts):
        for n in (3, 2):
            joined = "_".join(parts[i : i + n])
            if joined in _PROTECTED:
                out.append(_PROTECTED[joined])
                i += n
                break
        else:
            out.append(parts[i])
            i += 1
    return ".".join(out)


_KINDS = {
    ".lora_A.weight": "A",
    ".lora_B.weight": "B",
    ".lora_down.weight": "A",
    ".lora_up.weight": "B",
    ".alpha": "alpha",
}
_SUFFIXES = tuple(_KINDS)


def _split_key(key: str) -> tuple[str, str]:
    """key -> (module path with the format's prefix, kind in {A, B, alpha})."""
    for suffix, kind in _KINDS.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], kind
    raise UserError(
        f"unexpected LoRA key {key}; expected .lora_A/.lora_B/.lora_down/.lora_up weights and .alpha"
    )


def read_modules(
    tensors: dict[str, torch.Tensor], fmt: str | None = None, metadata: dict[str, str] | None = None
) -> dict[str, LoraModule]:
    """Any supported format -> canonical modules (q/k/v split back out of comfy's fused qkv)."""
    fmt = fmt or detect_format(list(tensors))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        module, kind = _split_key(key)
        if fmt == "kohya":
            module = _kohya_module(module.removeprefix("lora_unet_"))
        elif fmt == "foreign":  # names kept; "kohya:" remembers the lora_down/up key style for writing
            module = ("kohya:" if any(k.endswith(".lora_down.weight") for k in tensors) else "") + module
        else:
            for prefix in ("diffusion_model.", "transformer.", "base_model.model."):
                module = module.removeprefix(prefix)
        parts.setdefault(module, {})[kind] = value
    raw = json.loads((metadata or {}).get(DIFFUSERS_METADATA_KEY) or "{}")
    peft_cfg = {k.removeprefix("transformer."): v for k, v in raw.items()}
    modules = {}
    for module, p in parts.items():
        if "A" not in p or "B" not in p:
            raise UserError(
                f"module {module} has {'no lora_A/down' if 'A' not in p else 'no lora_B/up'} weight"
            )
        if p["A"].ndim != 2 or p["B"].ndim != 2:
            raise UserError(
                f"module {module}: LoRA weights must be 2-D matrices (got {list(p['A'].shape)} and "
                f"{list(p['B'].shape)}; convolution LoRAs are not supported)"
            )
        if p["A"].shape[0] != p["B"].shape[1]:
            raise UserError(
                f"module {module}: lora_A/down has rank {p['A'].shape[0]} but lora_B/up has rank "
                f"{p['B'].shape[1]}; the file is damaged"
            )
        if "alpha" in p:
            alpha = float(p["alpha"])
        else:
            alpha = peft_cfg.get("alpha_pattern", {}).get(module, peft_cfg.get("lora_alpha"))
            alpha = float(alpha) if alpha is not None else None
        modules[module] = LoraModule(p["A"], p["B"], alpha)
    return _unfuse(modules) if fmt in ("comfy-fused", "kohya") else modules


def diffusers_metadata(modules: dict[str, LoraModule]) -> dict[str, str]:
    """The peft LoraConfig that diffusers builds the adapter from (rank/alpha per module via patterns)."""
    if all(m.alpha is None for m in modules.values()):
        return {}  # nothing to say: every loader assumes alpha = rank
    alphas = {n: m.alpha if m.alpha is not None else float(m.rank) for n, m in modules.items()}
    r = Counter(m.rank for m in modules.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    cfg = {
        "r": r,
        "lora_alpha": alpha,
        "target_modules": sorted(modules),
        "rank_pattern": {n: m.rank for n, m in modules.items() if m.rank != r},
        "alpha_pattern": {n: a for n, a in alphas.items() if a != alpha},
    }
    # Pipeline-level files key the config by component: diffusers keeps the `transformer.` entries.
    return {DIFFUSERS_METADATA_KEY: json.dumps({f"transformer.{k}": v for k, v in cfg.items()})}


def fold_scale(modules: dict[str, LoraModule]) -> dict[str, LoraModule]:
    """alpha/rank multiplied into B (in fp32, cast back) and alpha = rank: the same delta for a reader that
    assumes scale 1."""
    out = {}
    for name, m in modules.items():
        s = (m.alpha if m.alpha is not None else m.rank) / m.rank
        out[name] = LoraModule(m.A, m.B if s == 1 else (m.B.float() * s).to(m.B.dtype), float(m.rank))
    return out


def encode(modules: dict[str, LoraModule], fmt: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Canonical modules -> (tensors, metadata the format needs beside them) for ``fmt``."""
    fmt = fmt if fmt == "foreign" else resolve_format(fmt)
    meta = diffusers_metadata(fold_scale(modules)) if fmt == "diffusers" else {}
    return write_modules(modules, fmt), meta


def write_modules(modules: dict[str, LoraModule], fmt: str) -> dict[str, torch.Tensor]:
    """Canonical modules -> the tensors of ``fmt`` (for ``diffusers`` use ``encode``: it adds the metadata)."""
    fmt = fmt if fmt == "foreign" else resolve_format(fmt)
    if fmt in ("comfy-fused", "kohya"):
        modules = _fuse(modules)
    elif fmt == "diffusers":
        modules = fold_scale(modules)
    out: dict[str, torch.Tensor] = {}
    for module, m in modules.items():
        if fmt == "kohya":
            base, a, b = "lora_unet_" + module.replace(".", "_"), ".lora_down.weight", ".lora_up.weight"
        elif fmt == "foreign":  # keys as they were read
            kohya = module.startswith("kohya:")
            base = module.removeprefix("kohya:")
            a, b = (".lora_down.weight", ".lora_up.weight") if kohya else (".lora_A.weight", ".lora_B.weight")
        else:
            prefix = "transformer." if fmt == "diffusers" else "diffusion_model."
            base, a, b = prefix + module, ".lora_A.weight", ".lora_B.weight"
        out[base + a], out[base + b] = m.A.contiguous(), m.B.contiguous()
        if m.alpha is not None and fmt != "diffusers":  # diffusers: alpha goes in diffusers_metadata()
            out[base + ".alpha"] = torch.tensor(m.alpha)
    return out


def _fuse(modules: dict[str, LoraModule]) -> dict[str, LoraModule]:
    """q/k/v -> one ``attention.qkv`` module: A stacked (3r, in), B block-diagonal (3 out, 3r). Exact when the three
    share rank and alpha (then fused alpha = 3 alpha keeps alpha/rank); otherwise the scales are folded into B.
    A member without a LoRA takes a zero one (zero delta), since ComfyUI has only the fused weight to patch."""
    out: dict[str, LoraModule] = {}
    for name, m in modules.items():
        if name.endswith(".attention.to_out.0"):
            out[name.removesuffix("to_out.0") + "out"] = m
        elif not name.endswith((".attention.to_q", ".attention.to_k", ".attention.to_v")):
            out[name] = m
    stems = sorted(
        {
            n.rsplit(".", 1)[0] + "."
            for n in modules
            if n.endswith((".to_q", ".to_k", ".to_v")) and ".attention." in n
        }
    )
    for stem in stems:
        trio = [modules.get(stem + s) for s in ("to_q", "to_k", "to_v")]
        some = next(t for t in trio if t is not None)
        trio = [
            t if t is not None else LoraModule(torch.zeros_like(some.A), torch.zeros_like(some.B), some.alpha)
            for t in trio
        ]
        same = len({(t.rank, t.alpha) for t in trio}) == 1
        Bs = [t.B if same else t.B * ((t.alpha or t.rank) / t.rank) for t in trio]
        A = torch.cat([t.A for t in trio], dim=0)
        B = torch.block_diag(*Bs)
        alpha = (3 * trio[0].alpha if trio[0].alpha is not None else None) if same else float(A.shape[0])
        out[stem + "qkv"] = LoraModule(A, B, alpha)
    return out


def _unfuse(modules: dict[str, LoraModule]) -> dict[str, LoraModule]:
    out: dict[str, LoraModule] = {}
    for name, m in modules.items():
        if name.endswith(".attention.out"):
            out[name.removesuffix("out") + "to_out.0"] = m
        elif name.endswith(".attention.qkv"):
            stem = name.removesuffix("qkv")
            out_dim, rank = m.B.shape[0] // 3, m.rank
            r = rank // 3
            blocks = [m.B[i * out_dim : (i + 1) * out_dim] for i in range(3)]
            diagonal = rank % 3 == 0 and all(
                torch.count_nonzero(blocks[i][:, : j * r]) == 0
                and torch.count_nonzero(blocks[i][:, (j + 1) * r :]) == 0
                for i, j in ((0, 0), (1, 1), (2, 2))
            )
            for i, comp in enumerate(("to_q", "to_k", "to_v")):
                if diagonal:  # a fused copy of three separate LoRAs: split exactly, rank r each
                    alpha = m.alpha / 3 if m.alpha is not None else None
                    out[stem + comp] = LoraModule(
                        m.A[i * r : (i + 1) * r], blocks[i][:, i * r : (i + 1) * r], alpha
                    )
                else:  # trained fused: each part keeps the full A (rank 3r); same delta, more parameters
                    out[stem + comp] = LoraModule(m.A, blocks[i], m.alpha)
        else:
            out[name] = m
    return out
