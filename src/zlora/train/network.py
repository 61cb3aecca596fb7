"""The LoRA being trained (a peft adapter on the transformer) and the Turbo training adapter beside it."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from zlora.config.schema import NetworkConfig
from zlora.errors import UserError

log = logging.getLogger(__name__)
USER_LORA = "default"  # peft's name for the adapter add_adapter creates: the LoRA being trained
ADAPTER = "assistant"  # the Turbo training adapter (model.assistant_lora_path)


def target_module_names(transformer: torch.nn.Module, net: NetworkConfig) -> list[str]:
    """Full names of the Linear modules that get a LoRA: ``target_blocks`` x ``target_modules``, minus
    ``exclude``."""
    blocks = "|".join(net.target_blocks)
    modules = "|".join(re.escape(m) for m in net.target_modules)
    pattern = re.compile(rf"^({blocks})\.\d+\.({modules})$")
    try:
        exclude = [re.compile(x) for x in net.exclude]
    except re.error as e:
        raise UserError(f"`network.exclude` has an invalid regular expression: {e}") from None
    names = [
        n
        for n, _ in transformer.named_modules()
        if pattern.match(n) and not any(x.search(n) for x in exclude)
    ]
    if not names:
        raise UserError(
            "`network.target_modules` / `target_blocks` / `exclude` leave no module to train; "
            f"modules look like layers.0.{net.target_modules[0]}"
        )
    return names


def add_user_lora(transformer: torch.nn.Module, net: NetworkConfig, seed: int) -> None:
    """peft LoRA (scale alpha / rank) on the target modules; its weights are fp32 whatever the base dtype."""
    from peft import LoraConfig

    config = LoraConfig(
        r=net.linear,
        lora_alpha=net.linear_alpha,
        lora_dropout=net.dropout,
        init_lora_weights=True,
        target_modules=target_module_names(transformer, net),
    )
    torch.manual_seed(seed)  # LoRA A init
    transformer.add_adapter(config, adapter_name=USER_LORA)
    for p in transformer.parameters():
        if p.requires_grad:
            p.data = p.data.float()


def load_training_adapter(transformer: torch.nn.Module, path: Path) -> None:
    """The Turbo training adapter: a second, frozen LoRA that de-distils Turbo while training. It stays a
    separate adapter (never merged), so switching it off for previews is exact and it is never saved."""
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


def set_active(transformer: torch.nn.Module, adapter: bool, user_weight: float = 1.0) -> None:
    """Activate the user LoRA at ``user_weight`` (0 = the base model, exactly) plus, if ``adapter``, the training
    adapter. Only the user LoRA trains."""
    names, weights = [USER_LORA], [user_weight]
    if adapter:
        names.append(ADAPTER)
        weights.append(1.0)
    transformer.set_adapters(names, weights)
    for name, p in transformer.named_parameters():
        if ".lora_" in name:  # peft's set_adapters marks every active adapter trainable: undo that
            p.requires_grad_(f".{USER_LORA}." in name)
