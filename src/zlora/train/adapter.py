"""The Turbo training adapter (``model.assistant_lora_path``) beside the network being trained, and the switch
between the two states the trainer needs: training (network + adapter) and previews (the network alone, at a
chosen weight; 0 is the base model exactly). The adapter stays a separate peft adapter, never merged, so turning
it off is exact under any dtype or quantization, and it is never saved."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from zlora.errors import UserError

log = logging.getLogger(__name__)
USER = "default"  # peft's name for the adapter add_adapter creates: the network being trained
ADAPTER = "assistant"  # the Turbo training adapter


def adapter_params(model: torch.nn.Module, adapter: str) -> dict[str, torch.nn.Parameter]:
    """Every parameter of one peft adapter (any tuner type: LoRA's A/B, LoKr's w1/w2, ...), by its model name,
    in ``named_parameters`` order."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    owned: set[int] = set()
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for layer in module.adapter_layer_names:
                holder = getattr(module, layer, None)
                if holder is not None and adapter in holder:
                    item = holder[adapter]
                    owned.update(
                        id(p) for p in ([item] if isinstance(item, torch.nn.Parameter) else item.parameters())
                    )
    return {n: p for n, p in model.named_parameters() if id(p) in owned}


def load_training_adapter(transformer: torch.nn.Module, path: Path) -> None:
    """The adapter as a second, frozen peft adapter named ``assistant``."""
    from diffusers import ZImagePipeline

    try:  # diffusers' converter reads every Z-Image LoRA key format (ai-toolkit, kohya, diffusers, ...)
        state = ZImagePipeline.lora_state_dict(str(path))
        transformer.load_lora_adapter(state, adapter_name=ADAPTER, prefix="transformer")
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise UserError(
            f"`model.assistant_lora_path` {path}: not a Z-Image LoRA ({type(e).__name__}: {e})"
        ) from None
    # diffusers only warns when no key matches the model; a silently ignored adapter would ruin the run.
    if ADAPTER not in getattr(transformer, "peft_config", {}):
        raise UserError(
            f"`model.assistant_lora_path` {path}: no key matches a Z-Image transformer module; "
            "is it a LoRA for another model (SDXL, Flux, ...)?"
        )
    log.info("training adapter %s loaded (active in training, off for previews)", path)


class AdapterSwitch:
    """``train()``: the network (at ``user_weight``) plus the adapter if there is one; ``preview(w)``: the network
    alone at weight ``w``. Only the network's parameters ever require gradients."""

    def __init__(self, transformer: torch.nn.Module, has_adapter: bool):
        self.transformer, self.has_adapter = transformer, has_adapter
        self.user = list(adapter_params(transformer, USER).values())
        self.frozen = list(adapter_params(transformer, ADAPTER).values()) if has_adapter else []
        self.off = False  # every adapter disabled (the network at weight 0, no training adapter)

    def train(self, user_weight: float = 1.0) -> None:
        self._set(self.has_adapter, user_weight)

    def preview(self, user_weight: float = 1.0) -> None:
        self._set(False, user_weight)

    def _set(self, adapter: bool, user_weight: float) -> None:
        # weight 0 leaves the network out: a DoRA network at weight 0 would still rescale the rows by its magnitude
        names, weights = ([USER], [user_weight]) if user_weight else ([], [])
        if adapter:
            names.append(ADAPTER)
            weights.append(1.0)
        if not names:
            self.transformer.disable_adapters()
            self.off = True
            return
        if self.off:
            self.transformer.enable_adapters()
            self.off = False
        self.transformer.set_adapters(names, weights)
        for p in self.frozen:  # peft's set_adapters marks every active adapter trainable: undo that
            p.requires_grad_(False)
        for p in self.user:
            p.requires_grad_(True)
