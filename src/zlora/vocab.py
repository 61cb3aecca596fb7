"""Z-Image's vocabulary: the transformer's block lists, the Linear modules inside a block (with the short labels
and the `lora scale` groups users know them by), the target presets and the patterns that match module names.

Torch-free and import-free, so the config schema, the LoRA tools, the CLI and the web UI (through ``/api/schema``)
all read the same names. The numbers (30 layers, dim 3840, ...) live in the model's own config, never here.
"""

from __future__ import annotations

import re

# The transformer's repeated block lists, in forward order: the refiners run first (noise_refiner on the image
# tokens, context_refiner on the caption tokens), then the 30 main ``layers`` on both.
BLOCK_LISTS = ("noise_refiner", "context_refiner", "layers")
MAIN_BLOCKS = "layers"
# Top-level modules outside the block lists (embedders and the final layer).
OTHER_ROOTS = ("all_x_embedder", "all_final_layer", "t_embedder", "cap_embedder", "x_embedder", "final_layer")

# The Linear modules inside a block that a LoRA can target -> the short label inspect's table and the heat map use.
COMPONENTS = {
    "attention.to_q": "q",
    "attention.to_k": "k",
    "attention.to_v": "v",
    "attention.to_out.0": "out",
    "feed_forward.w1": "w1",
    "feed_forward.w2": "w2",
    "feed_forward.w3": "w3",
    "adaLN_modulation.0": "adaLN",
}
ATTENTION = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0")
FEED_FORWARD = ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
ADALN = ("adaLN_modulation.0",)

# `network.preset`: which modules get a LoRA when `network.target_modules` is not given.
TARGET_PRESETS = {
    "attn": ATTENTION,
    "attn_ff": ATTENTION + FEED_FORWARD,
    "attn_ff_adaln": ATTENTION + FEED_FORWARD + ADALN,
}
DEFAULT_PRESET = "attn_ff"

# `lora scale` / merge multiplier groups (the community re-weighting script's components): option -> (modules, help).
SCALE_GROUPS = {
    "adaln": (ADALN, "adaLN_modulation"),
    "qk": (("attention.to_q", "attention.to_k"), "to_q and to_k"),
    "v": (("attention.to_v",), "to_v"),
    "attn_out": (("attention.to_out.0",), "attention to_out"),
    "ffn": (FEED_FORWARD, "w1, w2 and w3"),
    "w1": (("feed_forward.w1",), "w1"),
    "w2": (("feed_forward.w2",), "w2"),
    "w3": (("feed_forward.w3",), "w3"),
}

# The five sliders of the community re-weighting script (the web UI's Scale panel); w1/w2/w3 refine `ffn`.
SLIDER_GROUPS = ("adaln", "qk", "v", "attn_out", "ffn")

_LISTS = "|".join(BLOCK_LISTS)
# ``layers.12.attention.to_q`` -> (block list, index, module inside the block)
BLOCK_MODULE = re.compile(rf"^({_LISTS})\.(\d+)\.(.+)$")
# A module path of the transformer, also as kohya flattens it (``layers_0_...``): what tells a Z-Image LoRA.
ZIMAGE_MODULE = re.compile(rf"^({_LISTS})[._]\d+[._]|^({'|'.join(OTHER_ROOTS)})([._]|$)")
# Any module inside a repeated block (quantization and placement act on these).
IN_BLOCK = re.compile(rf"^({_LISTS})\.")


def as_json() -> dict:
    """The vocabulary the web UI shows (through ``/api/schema``): it hardcodes none of these names."""
    return {
        "block_lists": list(BLOCK_LISTS),
        "components": COMPONENTS,
        "presets": {k: list(v) for k, v in TARGET_PRESETS.items()},
        "scale_groups": {k: {"modules": list(m), "help": h} for k, (m, h) in SCALE_GROUPS.items()},
        "sliders": list(SLIDER_GROUPS),
    }


def split_block(name: str) -> tuple[str, int, str] | None:
    """``layers.12.attention.to_q`` -> ("layers", 12, "attention.to_q"); None outside the block lists."""
    m = BLOCK_MODULE.match(name)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None


def block_order(block: str) -> tuple[int, int]:
    """Sort key of ``noise_refiner.0`` / ``layers.3`` in forward order."""
    kind, idx = block.rsplit(".", 1)
    return BLOCK_LISTS.index(kind), int(idx)


def target_pattern(blocks: list[str], modules: list[str]) -> re.Pattern:
    """Full module names ``<block list>.<i>.<module>`` for the given block lists x modules."""
    return re.compile(rf"^({'|'.join(blocks)})\.\d+\.({'|'.join(re.escape(m) for m in modules)})$")
