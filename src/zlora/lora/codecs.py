"""LoRA key formats for Z-Image as a table of codecs: each knows its name, the names consumers know it by, how to
recognise its keys, and how to read it into the canonical form (``modules.py``) and write it back.

- ``zlora``: ``diffusion_model.<module>.lora_A/B.weight`` + ``.alpha`` (ai-toolkit writes the same keys without
  alpha). diffusers and ComfyUI load it fully.
- ``diffusers``: ``transformer.<module>.lora_A/B.weight`` (also ``base_model.model.`` prefixes from peft). B is
  written already multiplied by alpha/rank and alpha = rank goes in the ``lora_adapter_metadata`` header, so a
  reader that sees the tensors only (ComfyUI) applies the same delta as diffusers.
- ``kohya``: ``lora_unet_<module with _>.lora_down/up.weight`` + ``.alpha`` (musubi-tuner, sd-scripts), with the
  split names their merges look up (``lora_unet_layers_0_attention_to_q`` ... ``_to_out_0``, ``_feed_forward_w1``:
  the weight key with ``.`` as ``_``); ComfyUI's fused ``attention_qkv`` / ``attention_out`` are read too.
- ``comfy-fused`` (alias ``comfy``): like zlora, with q/k/v fused into ``attention.qkv`` and ``to_out.0`` named
  ``attention.out``: every patch is keyed by a whole ComfyUI weight, so its bypass loader takes all of it.
- ``foreign``: with ``--allow-foreign``, a LoRA for another model is read and written with its keys as they are.

Conversions keep the delta ``(alpha/rank) B A`` of every module; the A/B split changes where a format needs it
(diffusers folds the scale into B, fused formats stack q/k/v). diffusers' own converter only reads (into peft's
in-memory form), so writing each format is done here. A new format is one new ``Codec`` in ``CODECS``: the CLI's
``--to`` choices, the web UI's dropdown and the README's table are made from this table.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import TYPE_CHECKING

from zlora.errors import UserError
from zlora.lora.modules import LYCORIS_SUFFIXES, AnyModule, LoraModule, read_module
from zlora.lora.qkv import fuse, unfuse
from zlora.vocab import ZIMAGE_MODULE

if TYPE_CHECKING:  # torch is imported where tensors are made: the CLI's parser and the web UI read this table
    import torch

# diffusers reads a peft LoraConfig from this safetensors metadata key. A `transformer.*` file must not hold
# `.alpha` tensors: they send diffusers down its non-diffusers converter, which then fails to find the modules.
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
_KINDS = {".lora_A.weight": "A", ".lora_B.weight": "B", ".lora_down.weight": "A", ".lora_up.weight": "B",
          ".alpha": "alpha", ".dora_scale": "dora_scale", **{f".{s}": s for s in LYCORIS_SUFFIXES}}  # fmt: skip
SUFFIXES = tuple(_KINDS)
_PREFIXES = ("lora_unet_", "diffusion_model.", "transformer.", "base_model.model.")
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
# Names inside kohya's flattened module names that keep their underscores (or dots).
_PROTECTED = {
    "to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out_0": "to_out.0", "feed_forward": "feed_forward",
    "noise_refiner": "noise_refiner", "context_refiner": "context_refiner", "adaLN_modulation": "adaLN_modulation",
}  # fmt: skip


def split_key(key: str) -> tuple[str, str]:
    """key -> (module path with the format's prefix, kind in {A, B, alpha})."""
    for suffix, kind in _KINDS.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], kind
    raise UserError(
        f"unexpected LoRA key {key}; expected .lora_A/.lora_B/.lora_down/.lora_up weights (LoRA), .lokr_w1/w2 "
        "(LoKr), .hada_w1_a/... (LoHa), .dora_scale (DoRA) and .alpha"
    )


def module_of(key: str) -> str:
    """A key without its format prefix and LoRA suffix: the module as the model (or kohya) names it."""
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    return split_key(key)[0] if key.endswith(SUFFIXES) else key


class Codec:
    """One key format. The defaults read and write ``<prefix><module>.lora_A/B.weight`` + ``.alpha``."""

    name: str
    label: str  # what the consumer knows it as (CLI help, the UI's dropdown)
    aliases: tuple[str, ...] = ()
    prefix = "diffusion_model."
    down_up = False  # lora_down/up instead of lora_A/B
    fused = False  # q/k/v as one attention.qkv, to_out.0 as attention.out (ComfyUI's modules)
    writes_alpha = True  # a scalar `.alpha` key per module
    offered = True  # a `--to` choice

    def detect(self, keys: list[str]) -> bool:
        raise NotImplementedError

    def module_name(self, stem: str) -> str:
        """A key's module part (prefix included) -> the canonical module name."""
        return stem.removeprefix(self.prefix)

    def key_base(self, module: str) -> str:
        return self.prefix + module

    def alpha_fallback(self, metadata: dict[str, str]):
        """module -> alpha for modules without an ``.alpha`` key: from a peft config in the metadata (diffusers
        files), else None (alpha = rank)."""
        raw = json.loads((metadata or {}).get(DIFFUSERS_METADATA_KEY) or "{}")
        cfg = {k.removeprefix("transformer."): v for k, v in raw.items()}

        def alpha(module: str) -> float | None:
            value = cfg.get("alpha_pattern", {}).get(module, cfg.get("lora_alpha"))
            return float(value) if value is not None else None

        return alpha

    def read(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, LoraModule]:
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            stem, kind = split_key(key)
            parts.setdefault(self.module_name(stem), {})[kind] = value
        fallback = self.alpha_fallback(metadata)
        modules = {m: read_module(m, p, fallback) for m, p in parts.items()}
        return unfuse(modules) if self.fused else modules

    def prepare(self, modules: dict[str, AnyModule]) -> dict[str, AnyModule]:
        if self.fused:
            qkv = [n for n, m in modules.items() if m.kind != "lora" and n.endswith(("to_q", "to_k", "to_v"))]
            if qkv:
                raise UserError(
                    f"{modules[qkv[0]].kind} modules on q/k/v ({qkv[0]}, ...) cannot be fused into ComfyUI's "
                    "attention.qkv; write --to zlora (ComfyUI's LoRA loader reads it), or make a LoRA first "
                    "(zlora lora resize --rank N)"
                )
        return fuse(modules) if self.fused else modules

    def metadata(self, modules: dict[str, LoraModule]) -> dict[str, str]:
        return {}

    def write(self, modules: dict[str, LoraModule]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Canonical modules -> (tensors, the metadata the format needs beside them)."""
        import torch

        meta = self.metadata(modules)
        a, b = (
            (".lora_down.weight", ".lora_up.weight") if self.down_up else (".lora_A.weight", ".lora_B.weight")
        )
        out: dict[str, torch.Tensor] = {}
        for module, m in self.prepare(modules).items():
            base = self.key_base(module)
            out.update(_tensors(base, m, a, b))
            if m.alpha is not None and self.writes_alpha:
                out[base + ".alpha"] = torch.tensor(m.alpha)
        return out, meta


class Zlora(Codec):
    name, label, aliases = "zlora", "zlora (diffusers, ComfyUI, ai-toolkit)", ("ai-toolkit",)

    def detect(self, keys: list[str]) -> bool:
        return any(k.startswith("diffusion_model.") for k in keys)


class ComfyFused(Codec):
    name, label, aliases = "comfy-fused", "ComfyUI (its bypass loader too)", ("comfy", "comfyui")
    fused = True

    def detect(self, keys: list[str]) -> bool:
        return any(k.startswith("diffusion_model.") for k in keys) and any(
            ".attention.qkv." in k for k in keys
        )


class Diffusers(Codec):
    name, label = "diffusers", "diffusers / peft"
    prefix = "transformer."
    writes_alpha = False  # alpha goes in the lora_adapter_metadata header

    def detect(self, keys: list[str]) -> bool:
        return any(k.startswith(("transformer.", "base_model.model.")) for k in keys)

    def module_name(self, stem: str) -> str:
        for prefix in ("transformer.", "base_model.model."):
            stem = stem.removeprefix(prefix)
        return stem

    def prepare(self, modules: dict[str, AnyModule]) -> dict[str, LoraModule]:
        other = next((m.kind for m in modules.values() if m.kind != "lora"), None)
        if other:
            raise UserError(
                f"diffusers loads only LoRA files for Z-Image, not {other}; write --to zlora (ComfyUI) or make a "
                "LoRA first (zlora lora resize --rank N)"
            )
        return {n: m.folded() for n, m in modules.items()}

    def metadata(self, modules: dict[str, LoraModule]) -> dict[str, str]:
        return diffusers_metadata(self.prepare(modules))


class Kohya(Codec):
    name, label, aliases = "kohya", "kohya (musubi-tuner, sd-scripts)", ("musubi",)
    prefix, down_up = "lora_unet_", True

    def read(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, LoraModule]:
        return unfuse(super().read(tensors, metadata))  # files written with ComfyUI's fused names still load

    def detect(self, keys: list[str]) -> bool:
        return any(k.startswith("lora_unet_") for k in keys)

    def module_name(self, stem: str) -> str:
        return kohya_module(stem.removeprefix(self.prefix))

    def key_base(self, module: str) -> str:
        return self.prefix + module.replace(".", "_")


class Foreign(Codec):
    """Another model's LoRA (``--allow-foreign``): names kept as they are; ``kohya:`` remembers the lora_down/up key
    style for writing."""

    name, label, offered = "foreign", "keys as they are (--allow-foreign)", False

    def detect(self, keys: list[str]) -> bool:
        return False

    def read(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, LoraModule]:
        kohya = "kohya:" if any(k.endswith(".lora_down.weight") for k in tensors) else ""
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            stem, kind = split_key(key)
            parts.setdefault(kohya + stem, {})[kind] = value
        fallback = self.alpha_fallback(metadata)
        return {m: read_module(m, p, fallback) for m, p in parts.items()}

    def write(self, modules: dict[str, LoraModule]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        import torch

        out: dict[str, torch.Tensor] = {}
        for module, m in modules.items():
            kohya = module.startswith("kohya:")
            base = module.removeprefix("kohya:")
            a, b = (".lora_down.weight", ".lora_up.weight") if kohya else (".lora_A.weight", ".lora_B.weight")
            out.update(_tensors(base, m, a, b))
            if m.alpha is not None:
                out[base + ".alpha"] = torch.tensor(m.alpha)
        return out, {}


# Detection order: the first codec whose keys match. comfy-fused before zlora (same prefix, fused attention).
CODECS = {c.name: c for c in (Zlora(), Diffusers(), Kohya(), ComfyFused())}
FOREIGN = Foreign()
_DETECT_ORDER = ("kohya", "comfy-fused", "zlora", "diffusers")
ALIASES = {alias: c.name for c in CODECS.values() for alias in c.aliases}
# What to hand to which tool (the README's table is made from this; a test keeps them the same).
CONSUMERS = [
    ("diffusers (`load_lora_weights`)", "`zlora` (default) or `diffusers`", "both load fully at the trained strength"),
    ("ComfyUI, LoRA loader", "`zlora` or `comfy`", ""),
    ("ComfyUI, bypass LoRA loader", "`comfy` (= `comfy-fused`)",
     "it patches whole weights only: q/k/v must be the fused `attention.qkv`"),
    ("kohya-style tools (musubi-tuner, sd-scripts)", "`kohya`",
     "`lora_unet_*` + `lora_down/up` + `.alpha` with the split names their merges look up (`attention_to_q` ... "
     "`attention_to_out_0`, `feed_forward_w1`): musubi-tuner applies every module"),
]  # fmt: skip


def choices() -> list[str]:
    """Every name `--to` takes: the formats and the consumers' names for them."""
    return [*CODECS, *ALIASES]


def consumers_table() -> str:
    """The README's "which format for which tool" table, in Markdown."""
    rows = ["| tool | format | why |", "|---|---|---|"]
    rows += [f"| {tool} | {fmt} | {why} |".replace("|  |", "| |") for tool, fmt, why in CONSUMERS]
    return "\n".join(rows)


def codec(name: str) -> Codec:
    """The codec of a format name or a consumer's name for it."""
    if name == "foreign":
        return FOREIGN
    found = CODECS.get(ALIASES.get(name, name))
    if found is None:
        raise UserError(f"unknown format {name!r}; choose one of {', '.join(choices())}")
    return found


def resolve_format(name: str) -> str:
    return codec(name).name


def detect_format(keys: list[str], allow_foreign: bool = False) -> str:
    """The key format of a Z-Image LoRA; a LoRA for another model (SDXL, Flux, ...) is an error naming it, or,
    with ``allow_foreign``, the format ``foreign`` (keys kept as they are)."""
    if not keys:
        raise UserError("the LoRA file holds no tensors")
    lora_keys = [k for k in keys if k.endswith(SUFFIXES)]
    if not lora_keys:
        raise UserError(f"no LoRA weights in the file (keys like {keys[0]}); is it a model, not a LoRA?")
    foreign = [k for k in lora_keys if not ZIMAGE_MODULE.match(module_of(k))]
    if foreign:
        if allow_foreign:
            return "foreign"
        votes = [
            a for pattern, a in _FOREIGN if sum(bool(pattern.search(k)) for k in foreign) > len(foreign) // 2
        ]
        arch = votes[0] if votes else "another model"
        raise UserError(
            f"this is a LoRA for {arch}, not Z-Image ({len(foreign)} of {len(lora_keys)} modules, "
            f"e.g. {foreign[0]}); pass --allow-foreign to process it anyway"
        )
    for name in _DETECT_ORDER:
        if CODECS[name].detect(keys):
            return name
    raise UserError(f"unknown LoRA key format (keys like {keys[0]}); expected one of {', '.join(CODECS)}")


def read_modules(
    tensors: dict[str, torch.Tensor], fmt: str | None = None, metadata: dict[str, str] | None = None
) -> dict[str, LoraModule]:
    """Any supported format -> canonical modules (q/k/v split back out of comfy's fused qkv)."""
    return codec(fmt or detect_format(list(tensors))).read(tensors, metadata or {})


def encode(modules: dict[str, LoraModule], fmt: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Canonical modules -> (tensors, metadata the format needs beside them) for ``fmt``."""
    return codec(fmt).write(modules)


def write_modules(modules: dict[str, LoraModule], fmt: str) -> dict[str, torch.Tensor]:
    """Canonical modules -> the tensors of ``fmt`` (for ``diffusers`` use ``encode``: it adds the metadata)."""
    return encode(modules, fmt)[0]


def _tensors(base: str, m: AnyModule, a: str, b: str) -> dict[str, torch.Tensor]:
    """A module's tensors under ``base``: LoRA's A/B as ``a``/``b``; DoRA's dora_scale, LoKr / LoHa's factors by
    their LyCORIS key names, which ComfyUI reads."""
    out = {base + a: m.A.contiguous(), base + b: m.B.contiguous()} if m.kind in ("lora", "dora") else {}
    return {
        **out,
        **({} if m.kind == "lora" else {f"{base}.{s}": t.contiguous() for s, t in m.tensors().items()}),
    }


def kohya_module(flat: str) -> str:
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
