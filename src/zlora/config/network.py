"""The ``network`` section: what trains. Its class is chosen by ``network.type`` (a discriminated union, default
``lora``); a new type is one class here added to ``NETWORK_TYPES`` (and its trainer class in ``train/network.py``)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Discriminator, Field, Tag, model_validator

from zlora.config.base import MAX_RANK, Section
from zlora.vocab import DEFAULT_PRESET, TARGET_PRESETS

DEFAULT_TARGET_MODULES = list(TARGET_PRESETS[DEFAULT_PRESET])


class NetworkBase(Section):
    """What every network type shares: the rank and alpha, and which modules it targets."""

    type: str
    linear: int = Field(16, ge=1, le=MAX_RANK)
    """Linear Rank (the LoRA rank r)."""
    linear_alpha: float = Field(16, gt=0)
    """Linear Alpha: the update is scaled by alpha / rank."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the network path's input (peft ``lora_dropout``)."""
    preset: Literal["attn", "attn_ff", "attn_ff_adaln"] = DEFAULT_PRESET
    """Which modules get the network when ``target_modules`` is not given: attention only; attention +
    feed-forward; both + the adaLN modulation."""
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    """Module names inside each block that get the network (set explicitly, they win over ``preset``)."""
    exclude: list[str] = Field(default_factory=list)
    """Regular expressions on full module names (e.g. ``layers\\.(0|1)\\.``): matching modules get no network."""
    target_blocks: list[Literal["layers", "noise_refiner", "context_refiner"]] = Field(
        default_factory=lambda: ["layers"]
    )
    """Which block lists of the transformer are targeted."""

    @model_validator(mode="after")
    def _preset(self) -> NetworkBase:
        if "target_modules" not in self.model_fields_set:
            object.__setattr__(self, "target_modules", list(TARGET_PRESETS[self.preset]))
        return self


class LoraNetworkConfig(NetworkBase):
    type: Literal["lora"] = "lora"
    """Target Type: ``lora`` (delta = (alpha / rank) B A on each target Linear)."""


class DoraNetworkConfig(NetworkBase):
    type: Literal["dora"] = "dora"  # type: ignore[assignment]
    """Target Type: ``dora`` (DoRA: a LoRA plus a trained magnitude per output row, peft's ``use_dora``: the new
    weight is ``m (W + delta) / ||W + delta||`` row by row). Saved with ComfyUI's ``dora_scale``; the LoRA tools
    need the base model for its delta (``--base``)."""


class LycorisBase(NetworkBase):
    """LoKr and LoHa: peft's LyCORIS tuners, which have no input dropout."""

    @model_validator(mode="after")
    def _no_dropout(self) -> LycorisBase:
        if self.dropout:
            raise ValueError(
                f"`network.dropout` is for network.type lora; peft's {self.type} has none: set 0"
            )
        return self


class LokrNetworkConfig(LycorisBase):
    type: Literal["lokr"] = "lokr"  # type: ignore[assignment]
    """Target Type: ``lokr`` (LoKr: delta = kron(w1, w2), peft's LoKr; ai-toolkit's and LyCORIS's keys)."""
    lokr_factor: int = Field(-1, ge=-1, le=MAX_RANK)
    """LoKr Factor (ai-toolkit's ``lokr_factor``): the side of the small Kronecker factor w1 (e.g. 4, 8, 16: w1
    is factor x factor, w2 the rest); -1 splits each side near its square root. Smaller factors: bigger w2, more
    capacity."""
    lokr_full_rank: bool = False
    """LoKr Full Rank (ai-toolkit's ``lokr_full_rank``): w2 is a whole matrix, not a rank-``linear`` product;
    trained at scale 1 as LyCORIS does (alpha does not apply)."""

    @model_validator(mode="after")
    def _factor(self) -> LokrNetworkConfig:
        if self.lokr_factor in (0, 1):
            raise ValueError("`network.lokr_factor` must be -1 (near the square root) or at least 2")
        return self


class LohaNetworkConfig(LycorisBase):
    type: Literal["loha"] = "loha"  # type: ignore[assignment]
    """Target Type: ``loha`` (LoHa: delta = (alpha / rank) (w1_a w1_b) * (w2_a w2_b), peft's LoHa)."""


# network.type -> its config class: the config of `network` is chosen by its `type` (default lora).
NETWORK_TYPES = {
    "lora": LoraNetworkConfig,
    "lokr": LokrNetworkConfig,
    "loha": LohaNetworkConfig,
    "dora": DoraNetworkConfig,
}


def _network_type(value) -> str:
    return value.get("type", "lora") if isinstance(value, dict) else getattr(value, "type", "lora")


NetworkConfig = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for name, cls in NETWORK_TYPES.items())],  # noqa: UP007
    Discriminator(_network_type),
]
