"""The network being trained, by ``network.type``: one class per type owns adding it to the transformer (through
peft), listing the tensors that train, and exporting its state as the canonical modules the LoRA codecs write.
A new type is one class here (plus its codec in ``lora/codecs.py``)."""

from __future__ import annotations

import re

import torch

from zlora.config.network import NetworkConfig
from zlora.errors import UserError
from zlora.lora.modules import AnyModule, DoraModule, LohaModule, LokrModule, LoraModule
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
        config = self.peft_config(target_module_names(transformer, self.cfg), transformer)
        torch.manual_seed(seed)  # the adapter's random init
        transformer.add_adapter(config, adapter_name=USER)
        for p in transformer.parameters():
            if p.requires_grad:
                p.data = p.data.float()

    def peft_config(self, names: list[str], transformer: torch.nn.Module):
        """The peft config of this type for the modules ``names``."""
        from peft import LoraConfig

        net = self.cfg
        return LoraConfig(
            r=net.linear,
            lora_alpha=net.linear_alpha,
            lora_dropout=net.dropout,
            init_lora_weights=True,
            target_modules=names,
        )

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


class LycorisNetwork(LoraNetwork):
    """peft's LoKr / LoHa (its ``LoKrConfig`` / ``LoHaConfig``, from LyCORIS); exported with LyCORIS's tensor names,
    at the scale ComfyUI applies to them (``lora.modules.LokrModule`` / ``LohaModule``)."""

    prefix = ""  # of its parameters' names in peft (lokr_w1, hada_w1_a, ...)

    def export(self, params: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, AnyModule]:
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for name, value in params.items():
            module, tensor, _adapter = name.rsplit(".", 2)
            parts.setdefault(module, {})[tensor.removeprefix(self.prefix)] = value.detach().float()
        return {m: self.module(m, p, dtype) for m, p in parts.items()}

    def describe(self) -> dict[str, str]:
        return {"type": self.cfg.type, **super().describe()}


class LokrNetwork(LycorisNetwork):
    """LoKr: ``lokr_factor`` is peft's ``decompose_factor``; ``lokr_full_rank`` gives each module a rank of at
    least half its w2's larger side (peft then keeps w2 whole) and alpha = that rank (scale 1, as LyCORIS)."""

    prefix = "lokr_"

    def peft_config(self, names, transformer):
        from peft import LoKrConfig
        from peft.tuners.lokr.layer import factorization

        net = self.cfg
        full: dict[str, int] = {}
        if net.lokr_full_rank:
            for n in names:
                m = transformer.get_submodule(n)
                out2 = factorization(m.out_features, net.lokr_factor)[1]
                in2 = factorization(m.in_features, net.lokr_factor)[1]
                full[n] = max(out2, in2)
        return LoKrConfig(
            r=net.linear,
            alpha=net.linear_alpha,
            decompose_factor=net.lokr_factor,
            target_modules=names,
            rank_pattern={rf"^{re.escape(n)}$": r for n, r in full.items()},
            alpha_pattern={rf"^{re.escape(n)}$": float(r) for n, r in full.items()},
        )

    def module(self, name: str, p: dict[str, torch.Tensor], dtype: torch.dtype) -> LokrModule:
        """peft scales kron(w1, w2) by alpha / r always; ComfyUI by alpha / rank only when a factor is a product
        (else 1): with both factors whole, the scale goes into w1 and no alpha is written."""
        net = self.cfg
        scale = 1.0 if net.lokr_full_rank else net.linear_alpha / net.linear  # what peft multiplies by
        decomposed = "w1" not in p or "w2" not in p  # (never with lokr_full_rank)
        if not decomposed:
            p = {**p, "w1": p["w1"] * scale}
        return LokrModule(
            **{k: _copy(v, dtype) for k, v in p.items()},
            alpha=float(net.linear_alpha) if decomposed else None,
        )


class LohaNetwork(LycorisNetwork):
    prefix = "hada_"

    def peft_config(self, names, transformer):
        from peft import LoHaConfig

        return LoHaConfig(r=self.cfg.linear, alpha=self.cfg.linear_alpha, target_modules=names)

    def module(self, name: str, p: dict[str, torch.Tensor], dtype: torch.dtype) -> LohaModule:
        return LohaModule(**{k: _copy(v, dtype) for k, v in p.items()}, alpha=float(self.cfg.linear_alpha))


class DoraNetwork(LoraNetwork):
    """peft's DoRA (``LoraConfig(use_dora=True)``): ``W' = m (W + s B A) / ||W + s B A||`` per output row, ``m``
    trained (``lora_magnitude_vector``). ComfyUI's loader divides by the norm of the *base* rows instead
    (``weight_decompose`` with an output-axis ``dora_scale``), so the file holds ``dora_scale = m (||W|| + eps) /
    ||W + s B A||``, computed from the transformer's own base weights when it is written: the weight ComfyUI makes
    from the file is the trained one. ``dora_scale`` is kept in fp32 whatever ``save.dtype`` (a bf16 rounding of it
    rescales the whole row of W, many times the trained delta)."""

    def add(self, transformer: torch.nn.Module, seed: int) -> None:
        super().add(transformer, seed)
        self.transformer = transformer  # its base weights, for export

    def peft_config(self, names, transformer):
        config = super().peft_config(names, transformer)
        config.use_dora = True
        return config

    def export(self, params: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, DoraModule]:
        from peft.utils.integrations import dequantize_module_weight

        loras = super().export(params, torch.float32)
        out = {}
        for module, m in loras.items():
            m = LoraModule(m.A.to(dtype), m.B.to(dtype), m.alpha)  # the norm of what the file will hold
            magnitude = params[f"{module}.lora_magnitude_vector.{USER}.weight"].detach().float().cpu()
            layer = self.transformer.get_submodule(module).get_base_layer()  # W, without the Turbo adapter
            with torch.no_grad():
                w = dequantize_module_weight(layer).detach().float().cpu()
                full = (w + m.delta()).norm(dim=1)
                base = w.norm(dim=1) + torch.finfo(torch.float32).eps
            scale = (magnitude * base / full)[:, None]
            out[module] = DoraModule(m.A, m.B, m.alpha, scale)
        return out

    def describe(self) -> dict[str, str]:
        return {"type": "dora", **super().describe()}


NETWORKS = {"lora": LoraNetwork, "lokr": LokrNetwork, "loha": LohaNetwork, "dora": DoraNetwork}


def make_network(cfg: NetworkConfig) -> LoraNetwork:
    return NETWORKS[cfg.type](cfg)
