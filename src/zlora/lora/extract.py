"""``zlora lora extract``: a LoRA from the difference between a fine-tuned transformer and its base.

For each targeted linear weight, ``W_tuned - W_base`` (fp32) is approximated at rank R by a randomized SVD
(``torch.svd_lowrank``: a full SVD of every 3840 x 10240 difference would take minutes on a CPU). Tensors are read
one at a time from memory-mapped safetensors files.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from zlora.errors import UserError
from zlora.lora.bake import transformer_files
from zlora.lora.modules import LoraModule
from zlora.utils.tensorfile import open_safetensors
from zlora.vocab import BLOCK_LISTS, COMPONENTS, target_pattern

_TARGET = target_pattern(list(BLOCK_LISTS), list(COMPONENTS))  # every Linear a LoRA can target


def weight_files(ref: str) -> list[Path]:
    path = Path(ref).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise UserError(f"{path}: weights must be .safetensors (pickle files are never loaded)")
        return [path]
    from zlora.models.load import resolve_model

    return transformer_files(resolve_model(ref).folder)


def extract(
    base: str, tuned: str, rank: int, min_rel_change: float = 1e-6
) -> tuple[dict[str, LoraModule], dict]:
    """Returns the modules (alpha = rank) and, per module, the relative error ||D - B A|| / ||D||."""
    errors: dict[str, float] = {}
    modules: dict[str, LoraModule] = {}
    with contextlib.ExitStack() as stack:
        base_h = {}
        for p in weight_files(base):
            f = stack.enter_context(open_safetensors(p))
            base_h.update({k: f for k in f.keys()})
        tuned_h = {}
        for p in weight_files(tuned):
            f = stack.enter_context(open_safetensors(p))
            tuned_h.update({k: f for k in f.keys()})
        keys = sorted(k for k in base_h if k.endswith(".weight") and _TARGET.match(k.removesuffix(".weight")))
        missing = [k for k in keys if k not in tuned_h]
        if missing or not keys:
            raise UserError(
                f"the tuned model lacks {len(missing)} of {len(keys)} target weights, e.g. {missing[:3]}"
            )
        g = torch.Generator().manual_seed(0)
        for key in keys:
            w_base, w_tuned = base_h[key].get_tensor(key).float(), tuned_h[key].get_tensor(key).float()
            if w_base.shape != w_tuned.shape:
                raise UserError(
                    f"{key}: shapes differ between base {list(w_base.shape)} and tuned {list(w_tuned.shape)}"
                )
            diff = w_tuned - w_base
            norm = float(torch.linalg.norm(diff))
            ref = float(torch.linalg.norm(w_base)) or 1.0
            if norm <= min_rel_change * ref:
                continue  # unchanged by the fine-tune
            r = min(rank, *diff.shape)
            torch.manual_seed(
                int(torch.randint(0, 2**31 - 1, (1,), generator=g))
            )  # svd_lowrank draws globally
            u, s, v = torch.svd_lowrank(diff, q=min(r + 8, *diff.shape), niter=4)
            root = s[:r].sqrt()
            B, A = u[:, :r] * root, root[:, None] * v[:, :r].T  # (out, r), (r, in)
            name = key.removesuffix(".weight")
            modules[name] = LoraModule(A.contiguous(), B.contiguous(), float(r))
            errors[name] = float(torch.linalg.norm(diff - B @ A)) / norm
    if not modules:
        raise UserError("the tuned model's target weights equal the base's: nothing to extract")
    return modules, errors
