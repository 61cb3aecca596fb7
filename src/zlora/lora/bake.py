"""``zlora lora bake``: a transformer with LoRA deltas merged in, streamed one tensor at a time.

Each base tensor is read from its memory-mapped safetensors file, the summed delta is added in fp32 (checked
finite) and cast back, and the bytes go straight to the output file, so peak memory stays near one tensor even for
the 12 GB transformer (``utils.tensorfile.write_streaming``: safetensors' own ``save_file`` needs every tensor in memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from zlora.errors import UserError
from zlora.lora.modules import LoraModule
from zlora.utils.io import make_dirs
from zlora.utils.tensorfile import DTYPE_OF, open_safetensors, write_streaming


def transformer_files(folder: Path) -> list[Path]:
    files = sorted((folder / "transformer").glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder}: transformer/ has no .safetensors weights")
    return files


def _specs(files: list[Path]) -> list[tuple[str, Path, torch.dtype, list[int]]]:
    """(key, file, dtype, shape) of every base tensor, without loading any data."""
    out = []
    for path in files:
        with open_safetensors(path) as f:
            for key in f.keys():
                sl = f.get_slice(key)
                out.append((key, path, DTYPE_OF[sl.get_dtype()], list(sl.get_shape())))
    return out


def model_shapes(model_folder: Path) -> dict[str, list[int]]:
    """{weight key: shape} of the model's transformer, from the safetensors headers (no tensor is read)."""
    return {key: shape for key, _, _, shape in _specs(transformer_files(model_folder))}


def check_fits(
    modules: dict[str, LoraModule], shapes: dict[str, list[int]], source: str = "the LoRA"
) -> None:
    """Every module must be a weight of the model with the delta's shape: a LoRA for another size of model (or
    with more layers) is named, instead of failing deep in a loader or being dropped with a warning."""
    unknown = sorted(n for n in modules if f"{n}.weight" not in shapes)
    if unknown:
        layers = sorted({int(k.split(".")[1]) for k in shapes if k.startswith("layers.")})
        have = f"; the model has layers 0-{layers[-1]}" if layers else ""
        raise UserError(
            f"{source}: {len(unknown)} modules match no weight of this model (e.g. "
            f"{', '.join(unknown[:3])}){have}: is it a LoRA for another model?"
        )
    for name, m in modules.items():
        shape = shapes[f"{name}.weight"]
        if list(m.shape) != shape:
            raise UserError(
                f"{source}: {name}.weight: the LoRA delta is {m.shape[0]}x{m.shape[1]}, the "
                f"model's weight is {shape[0]}x{shape[1]}: a LoRA for another size of model"
            )


def attach_base(modules: dict, model_folder: Path) -> dict:
    """DoRA modules with their base weight attached (``DoraModule.base``: read from the memory-mapped file when
    needed, one module at a time); other modules as they are."""
    dora = {n: m for n, m in modules.items() if m.kind == "dora"}
    if not dora:
        return modules
    specs = _specs(transformer_files(model_folder))
    check_fits(dora, {key: shape for key, _, _, shape in specs}, "the DoRA file")
    where = {key: path for key, path, _, _ in specs}

    def reader(key: str) -> Callable[[], torch.Tensor]:
        def read() -> torch.Tensor:
            with open_safetensors(where[key]) as f:
                return f.get_tensor(key)

        return read

    return {
        n: dataclasses.replace(m, base=reader(f"{n}.weight")) if n in dora else m for n, m in modules.items()
    }


def bake(model_folder: Path, loras: list[tuple[dict[str, LoraModule], float]], out: Path) -> list[str]:
    """Merge ``sum(weight * delta)`` into the base transformer and write it to ``out``: a ``.safetensors`` file, or a
    folder (config.json + weights) that ``ZImageTransformer2DModel.from_pretrained`` loads. Returns changed keys."""
    specs = _specs(transformer_files(model_folder))
    by_key = {key: (path, dtype, shape) for key, path, dtype, shape in specs}
    targets: dict[str, list[tuple[LoraModule, float]]] = {}
    for modules, weight in loras:
        check_fits(modules, {key: shape for key, (_, _, shape) in by_key.items()})
        for name, m in modules.items():
            targets.setdefault(f"{name}.weight", []).append((m, weight))

    def tensors() -> Iterator[torch.Tensor]:
        with contextlib.ExitStack() as stack:
            handles = {p: stack.enter_context(open_safetensors(p)) for p in {s[1] for s in specs}}
            for key, path, dtype, _ in specs:
                yield _merged(key, handles[path].get_tensor(key), dtype)

    def _merged(key: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if key not in targets:
            return t
        # base + sum(w * delta) in fp32, added in place: no fp32 copy of the base (a + b == b + a exactly)
        merged = sum(w * _on(m, t).delta() for m, w in targets[key]).add_(t)
        if not torch.isfinite(merged).all():
            raise UserError(f"{key}: the merged weight is not finite; check the LoRA weights")
        return merged.to(dtype)

    def _on(m, t: torch.Tensor):  # a DoRA module's delta is computed on this very base tensor
        return dataclasses.replace(m, base=t) if m.kind == "dora" else m

    meta = {"format": "pt", "baked_loras": str(len(loras))}
    plain = [(key, dtype, shape) for key, _, dtype, shape in specs]
    if out.suffix == ".safetensors":
        write_streaming(out, plain, tensors(), meta)
    else:
        make_dirs(out)
        shutil.copyfile(model_folder / "transformer" / "config.json", out / "config.json")
        write_streaming(out / "diffusion_pytorch_model.safetensors", plain, tensors(), meta)
    return sorted(targets)
