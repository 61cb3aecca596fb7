"""The network being trained, by ``network.type``: one class per type owns adding it to the transformer (through
peft), listing the tensors that train, and exporting its state as the canonical modules the LoRA codecs write.
A new type is one class here (plus its codec in ``lora/codecs.py``)."""

from __future__ import annotations

import re

import torch

from zlora.config.network import NetworkConfig
from zlora.errors import UserError
from zlora.lora.modules import LoraModule
from zlora.train.adapter import USER, adapter_params
from zlora.vocab import target_pattern


def target_module_names(transformer: torch.nn.Module, net: NetworkConfig) -> list[str]:
    """Full names of the Linear modules that get the network: ``target_blocks`` x ``target_modules``, minus
    ``exclude``."""
    pattern = target_pattern(net.target_blocks, net.target_modules)
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
    narrow = min((transformer.get_submodule(n) for n in names), key=_width)
    if net.linear > _width(narrow):
        raise UserError(
            f"`network.linear` {net.linear} is more than the width of the targeted modules (at least one is "
            f"{narrow.in_features} -> {narrow.out_features}); a rank above {_width(narrow)} adds nothing"
        )
    return names


def _width(module: torch.nn.Module) -> int:
    return min(module.in_features, module.out_features)


class LoraNetwork:
    """peft LoRA: ``delta = (alpha / rank) B A`` on each target Linear."""

    def __init__(self, cfg: NetworkConfig):
        self.cfg = cfg

    def add(self, transformer: torch.nn.Module, seed: int) -> None:
        """The adapter on the target modules; its weights are fp32 whatever the base dtype."""
        from peft import LoraConfig

        net = self.cfg
        config = LoraConfig(
            r=net.linear,
            lora_alpha=net.linear_alpha,
            lora_dropout=net.dropout,
            init_lora_weights=True,
            target_modules=target_module_names(transformer, net),
        )
        torch.manual_seed(seed)  # LoRA A init
        transformer.add_adapter(config, adapter_name=USER)
        for p in transformer.parameters():
            if p.requires_grad:
                p.data = p.data.float()

    def trainable(self, transformer: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        """The network's parameters by model name (``layers.0.attention.to_q.lora_A.default.weight``)."""
        return adapter_params(transformer, USER)

    def export(self, params: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, LoraModule]:
        """{model parameter name: tensor} (the trainable set, or the same names from a checkpoint) -> canonical
        modules on the CPU in ``dtype``."""
        a_suffix, b_suffix = f".lora_A.{USER}.weight", f".lora_B.{USER}.weight"
        out = {}
        for name, value in params.items():
            if name.endswith(a_suffix):
                module = name.removesuffix(a_suffix)
                B = params[module + b_suffix]
                out[module] = LoraModule(_copy(value, dtype), _copy(B, dtype), float(self.cfg.linear_alpha))
        return out

    def describe(self) -> dict[str, str]:
        """What the saved file's metadata says about the network."""
        return {"rank": str(self.cfg.linear), "alpha": str(self.cfg.linear_alpha)}


def _copy(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.detach().clone().to("cpu", dtype)


NETWORKS = {"lora": LoraNetwork}


def make_network(cfg: NetworkConfig) -> LoraNetwork:
    return NETWORKS[cfg.type](cfg)
