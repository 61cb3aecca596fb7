"""The ``zlora lora`` tools: inspect, convert, scale, merge, resize, bake, extract.

Every tool that writes checks its output first (``check_output``: never one of its inputs, never inside a model
folder it reads, an existing file only with ``overwrite``), so a refused command has touched nothing. A LoRA for
another model is refused unless ``allow_foreign``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from zlora.errors import UserError
from zlora.lora.codecs import DIFFUSERS_METADATA_KEY, detect_format, encode, read_modules
from zlora.lora.edit import Multipliers, check_multipliers, merge, reduce_rank, scale
from zlora.lora.file import read_lora
from zlora.lora.modules import LoraModule
from zlora.utils.io import check_output
from zlora.utils.tensorfile import save_tensors
from zlora.vocab import COMPONENTS, block_order, split_block


def needs_base(modules: dict) -> bool:
    """DoRA modules whose base weights are not attached: their delta cannot be computed."""
    return any(m.kind == "dora" and m.base is None for m in modules.values())


def delta_table(modules: dict[str, LoraModule]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """{block: {component label: delta norm}} in forward block order, and the modules outside it."""
    table: dict[str, dict[str, float]] = {}
    other = []
    for name, m in modules.items():
        where = split_block(name)
        label = COMPONENTS.get(where[2]) if where else None
        if label is None:
            other.append(name)
            continue
        table.setdefault(f"{where[0]}.{where[1]}", {})[label] = m.delta_norm()
    return {k: table[k] for k in sorted(table, key=block_order)}, sorted(other)


def inspect_lora(path: str | Path, allow_foreign: bool = False, base: str | None = None) -> str:
    tensors, meta = read_lora(path)
    fmt = detect_format(list(tensors), allow_foreign)
    modules = with_base(read_modules(tensors, fmt, meta), meta, base)
    ranks = sorted({m.rank for m in modules.values()})
    kinds = sorted({m.kind for m in modules.values()})
    alphas = sorted({m.alpha for m in modules.values() if m.alpha is not None})
    no_alpha = sum(m.alpha is None for m in modules.values())
    scales = sorted({m.scale for m in modules.values()})
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    lines = [
        f"file:     {path}",
        f"format:   {fmt}"
        + (
            " (ai-toolkit style: no .alpha keys)" if fmt == "zlora" and no_alpha and kinds == ["lora"] else ""
        ),
        f"type:     {', '.join(k if k == 'lora' else TYPE_WORDS[k] for k in kinds)}",
        f"modules:  {len(modules)}",
        f"rank:     {', '.join(map(str, ranks))}" + _rank_note(modules),
        "alpha:    "
        + (", ".join(f"{a:g}" for a in alphas) if alphas else "")
        + (
            f"{'; ' if alphas else ''}not stored for {no_alpha} modules: loaders use scale 1 (alpha = rank)"
            if no_alpha
            else ""
        ),
        "scale:    "
        + ", ".join(f"{x:g}" for x in scales)
        + (
            " (alpha/rank: the delta is scale x B A; a loader that reads tensors only uses the .alpha keys, else "
            "scale 1)"
            if kinds in (["lora"], ["dora"])
            else " (as ComfyUI applies it: alpha/rank; LoKr with both factors whole: 1)"
        ),
        f"dtype:    {', '.join(sorted({str(t.dtype).removeprefix('torch.') for t in tensors.values()}))}",
    ]
    if bad:
        lines.append(f"NOT FINITE: {len(bad)} tensors hold NaN/inf, e.g. {bad[0]}")
    for k, v in sorted(meta.items()):
        lines.append(f"meta {k}: {v[:100]}")

    if needs_base(modules):
        lines += ["", "delta norms: a DoRA delta depends on the base model's weights; pass --base MODEL"]
        return "\n".join(lines)
    table, other = delta_table(modules)
    comps = [c for c in COMPONENTS.values() if any(c in row for row in table.values())]
    if table:
        lines.append("")
        lines.append("delta Frobenius norm per block x component")
        lines.append(f"{'block':<20}" + "".join(f"{c:>10}" for c in comps))

        for block in table:
            row = table[block]
            lines.append(
                f"{block:<20}" + "".join(f"{row[c]:>10.4f}" if c in row else f"{'-':>10}" for c in comps)
            )
    if other:
        lines.append(f"other modules: {', '.join(other)}")
    return "\n".join(lines)


TYPE_WORDS = {
    "dora": "dora (DoRA: LoRA + a magnitude per output row, dora_scale; its delta needs the base model)",
    "lokr": "lokr (LoKr: kron(w1, w2))",
    "loha": "loha (LoHa: (w1_a w1_b) * (w2_a w2_b))",
}


def _rank_note(modules) -> str:
    lokr = [m for m in modules.values() if m.kind == "lokr"]
    if not lokr:
        return ""
    factors = sorted({f"{m.factors()[0].shape[0]}x{m.factors()[0].shape[1]}" for m in lokr})
    whole = sum(m.rank == 0 for m in lokr)
    return (
        f" (LoKr w1 {', '.join(factors)}"
        + (f"; both factors whole in {whole} modules: rank 0" if whole else "")
        + ")"
    )


def convert_lora(src: str | Path, dst: str | Path, fmt: str, overwrite: bool = False) -> str:
    """Rewrite ``src`` in format ``fmt`` (or a consumer's name for it); metadata is kept. Returns the source
    format."""
    check_output(dst, [src], overwrite=overwrite)
    modules, source, meta = read_lora_modules(src)
    write_lora(modules, dst, fmt, {**meta, "converted_from": source})
    return source


def read_lora_modules(
    path: str | Path, allow_foreign: bool = False, base: str | None = None
) -> tuple[dict[str, LoraModule], str, dict[str, str]]:
    """The file's modules, format and metadata; DoRA modules get the base weights of ``base`` (a model reference),
    else of the model the file names (``base_model``) when it is on this machine (never downloaded for this)."""
    tensors, meta = read_lora(path)
    fmt = detect_format(list(tensors), allow_foreign)
    return with_base(read_modules(tensors, fmt, meta), meta, base), fmt, meta


def with_base(modules: dict, meta: dict[str, str], base: str | None) -> dict:
    """DoRA modules with the base weights of ``base``, else of the file's ``base_model`` when it is here."""
    if not any(m.kind == "dora" for m in modules.values()):
        return modules
    from zlora.lora.bake import attach_base

    folder = _model_folder(base) if base else _local_model(meta.get("base_model") or "")
    return modules if folder is None else attach_base(modules, folder)  # without, delta() asks for --base


def _model_folder(ref: str) -> Path:
    from zlora.models.load import resolve_model

    return resolve_model(ref).folder


def _local_model(ref: str) -> Path | None:
    """The folder of a model reference when it is here (a folder, a pulled hub model, builtin:*), else None."""
    from zlora.hub.manifest import hub_settings
    from zlora.hub.refs import model_folder_of

    try:
        if ref.startswith("builtin:"):
            return _model_folder(ref)
        found = model_folder_of(ref, hub_settings(), fetch=False) if ref else None
    except UserError:
        return None
    return found[0] if found else None


def write_lora(modules: dict[str, LoraModule], dst: str | Path, fmt: str, meta: dict[str, str]) -> None:
    """Write canonical modules in ``fmt`` (diffusers: scale folded into B, alpha in lora_adapter_metadata)."""
    bad = [n for n, m in modules.items() if not m.is_finite()]
    if bad:
        raise UserError(f"refusing to write NaN/inf weights (modules: {', '.join(bad[:3])})")
    out, extra = encode(modules, fmt)
    meta = {k: v for k, v in meta.items() if k != DIFFUSERS_METADATA_KEY}
    meta["format"] = fmt
    save_tensors(dst, out, {**meta, **extra})


def scale_lora(
    src: str | Path,
    dst: str | Path,
    mult: Multipliers,
    overwrite: bool = False,
    allow_foreign: bool = False,
    base: str | None = None,
) -> None:
    check_output(dst, [src], overwrite=overwrite)
    modules, fmt, meta = read_lora_modules(src, allow_foreign, base)
    check_multipliers(modules, mult, str(src))
    write_lora(scale(modules, mult), dst, fmt, meta)


def _check_rank(rank: int | None) -> None:
    if rank is not None and rank < 1:
        raise UserError(f"--rank {rank}: the rank must be a positive integer, e.g. --rank 16")


def merge_loras(
    inputs: list[tuple[str, float]],
    dst: str | Path,
    rank: int | None = None,
    multipliers: list[Multipliers] | None = None,
    overwrite: bool = False,
    allow_foreign: bool = False,
    base: str | None = None,
) -> dict[str, float]:
    """Exact merge (ranks concatenated), or with ``rank`` an SVD down to it; each input first scaled by its own
    per-component / per-layer ``multipliers``. Returns kept energy per module."""
    _check_rank(rank)
    check_output(dst, [p for p, _ in inputs], overwrite=overwrite)
    mults = multipliers or [Multipliers() for _ in inputs]
    read = [
        (read_lora_modules(path, allow_foreign, base), m, weight)
        for (path, weight), m in zip(inputs, mults, strict=True)
    ]
    kinds = {fmt == "foreign" for (_, fmt, _), _, _ in read}
    if len(kinds) > 1:
        raise UserError(
            "cannot merge a Z-Image LoRA with a foreign one (--allow-foreign): their modules differ"
        )
    for ((modules, _, _), m, _), (path, _) in zip(read, inputs, strict=True):
        check_multipliers(modules, m, path)
        _check_finite(modules, path)
    merged, kept = merge([(scale(modules, m), weight) for (modules, _, _), m, weight in read], rank)
    meta = {"merged_from": json.dumps([[str(p), w] for p, w in inputs]), "rank": str(rank or "concatenated")}
    write_lora(
        {n: LoraModule(m.A.contiguous(), m.B.contiguous(), m.alpha) for n, m in merged.items()},
        dst,
        "foreign" if True in kinds else "zlora",
        meta,
    )
    return kept


def _check_finite(modules: dict[str, LoraModule], source) -> None:
    bad = [n for n, m in modules.items() if not m.is_finite()]
    if bad:
        raise UserError(
            f"{source}: {len(bad)} modules hold NaN/inf (e.g. {bad[0]}); there is no delta to keep. "
            "Use an earlier checkpoint of the run"
        )


def resize_lora(
    src: str | Path,
    dst: str | Path,
    rank: int,
    overwrite: bool = False,
    allow_foreign: bool = False,
    base: str | None = None,
) -> dict[str, float]:
    _check_rank(rank)
    check_output(dst, [src], overwrite=overwrite)
    modules, fmt, meta = read_lora_modules(src, allow_foreign, base)
    _check_finite(modules, src)
    have = max(m.rank for m in modules.values())
    if rank >= have and all(m.kind == "lora" for m in modules.values()):
        raise UserError(
            f"--rank {rank}: {src} is already rank {have} or less; a resize only lowers the rank "
            "(merge or extract make higher ranks)"
        )
    resized, kept = reduce_rank(modules, rank)
    types = {m.kind for m in modules.values()}
    meta = {
        **meta,
        "rank": str(rank),
        **({"type": "lora", "resized_from": "/".join(sorted(types))} if types != {"lora"} else {}),
    }
    write_lora(resized, dst, fmt, meta)
    return kept


def bake_loras(
    base: str, inputs: list[tuple[str, float]], out: str | Path, overwrite: bool = False
) -> list[str]:
    from zlora.lora.bake import bake
    from zlora.models.load import resolve_model

    folder = resolve_model(base).folder
    check_output(out, [p for p, _ in inputs], overwrite=overwrite, read_folders=[folder])
    # no base attached: bake computes each DoRA delta on the base tensor it streams
    read = []
    for path, weight in inputs:
        tensors, meta = read_lora(path)
        read.append((read_modules(tensors, metadata=meta), weight))
    return bake(folder, read, Path(out))


def extract_lora(
    base: str, tuned: str, rank: int, dst: str | Path, overwrite: bool = False
) -> dict[str, float]:
    from zlora.lora.extract import extract, weight_files

    _check_rank(rank)
    files = weight_files(base) + weight_files(tuned)
    check_output(
        dst,
        files,
        overwrite=overwrite,
        read_folders=[f.parent.parent for f in files if f.parent.name == "transformer"],
    )
    modules, errors = extract(base, tuned, rank)
    write_lora(
        modules,
        dst,
        "zlora",
        {"extracted_from": json.dumps({"base": base, "tuned": tuned}), "rank": str(rank)},
    )
    return errors
