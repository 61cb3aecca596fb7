"""The ``zlora lora`` subcommands (inspect, convert, scale, merge, resize, bake, extract) and ``FILE[:WEIGHT]``
parsing; ``cli.py`` wires them into the one parser."""

from __future__ import annotations

import argparse
from pathlib import Path

from zlora.errors import UserError


def cmd_lora_inspect(args: argparse.Namespace) -> int:
    from zlora.lora.tools import inspect_lora

    print(inspect_lora(args.file, args.allow_foreign))
    return 0


def _output(args: argparse.Namespace) -> str:
    """``-o/--output``, or the positional ``dst`` kept from before the one-convention change."""
    dst, out = getattr(args, "dst", None), args.output
    if dst and out and dst != out:
        raise UserError(f"two outputs given ({dst} and -o {out}); give one")
    if not (dst or out):
        raise UserError("no output given; add -o FILE")
    return dst or out


def cmd_lora_convert(args: argparse.Namespace) -> int:
    from zlora.lora.formats import resolve_format
    from zlora.lora.tools import convert_lora

    out, fmt = _output(args), resolve_format(args.to)
    source = convert_lora(args.src, out, fmt, args.overwrite)
    print(f"{args.src} ({source}) -> {out} ({fmt})")
    return 0


def _report_kept(kept: dict[str, float]) -> None:
    if kept:
        worst = min(kept, key=kept.get)
        mean = sum(kept.values()) / len(kept)
        # kept energy e = 1 - (relative Frobenius error)^2
        print(
            f"kept energy: mean {mean:.4f}, lowest {kept[worst]:.4f} ({worst}); "
            f"relative error there {max(0.0, 1 - kept[worst]) ** 0.5:.4f}"
        )


def cmd_lora_scale(args: argparse.Namespace) -> int:
    from zlora.lora.edit import COMPONENTS, Multipliers, parse_layer_spec
    from zlora.lora.tools import scale_lora

    if args.old_out is not None:  # `--out` was the to_out multiplier before -o/--output became the rule
        try:
            float(args.old_out)
        except ValueError:
            raise UserError(f"--out {args.old_out}: write the output as -o {args.old_out}") from None
        raise UserError(
            f"--out {args.old_out}: the to_out multiplier is now --attn-out {args.old_out} "
            "(-o/--output names the output file)"
        )
    comps = {c: getattr(args, c) for c in COMPONENTS}
    if comps["ffn"] is not None and any(comps[w] is not None for w in ("w1", "w2", "w3")):
        raise UserError("use either --ffn or --w1/--w2/--w3, not both")
    mult = Multipliers(
        args.ratio, {c: v for c, v in comps.items() if v is not None}, parse_layer_spec(args.layers)
    )
    out = _output(args)
    scale_lora(args.src, out, mult, args.overwrite, args.allow_foreign)
    print(out)
    return 0


def cmd_lora_merge(args: argparse.Namespace) -> int:
    from zlora.lora.edit import parse_input_multipliers
    from zlora.lora.tools import merge_loras

    parsed = [parse_input_multipliers(x) for x in args.inputs]
    inputs = [_parse_lora_arg(text) for text, _ in parsed]
    _report_kept(
        merge_loras(
            inputs, args.output, args.rank, [m for _, m in parsed], args.overwrite, args.allow_foreign
        )
    )
    print(args.output)
    return 0


def cmd_lora_resize(args: argparse.Namespace) -> int:
    from zlora.lora.tools import resize_lora

    out = _output(args)
    _report_kept(resize_lora(args.src, out, args.rank, args.overwrite, args.allow_foreign))
    print(out)
    return 0


def cmd_lora_bake(args: argparse.Namespace) -> int:
    from zlora.lora.tools import bake_loras

    changed = bake_loras(args.base, [_parse_lora_arg(x) for x in args.lora], args.output, args.overwrite)
    print(f"{args.output}: {len(changed)} weights changed")
    return 0


def cmd_lora_extract(args: argparse.Namespace) -> int:
    from zlora.lora.tools import extract_lora

    errors = extract_lora(args.base, args.tuned, args.rank, args.output, args.overwrite)
    worst = max(errors, key=errors.get)
    print(
        f"{len(errors)} modules; relative error: mean {sum(errors.values()) / len(errors):.4f}, "
        f"worst {errors[worst]:.4f} ({worst})"
    )
    print(args.output)
    return 0


def _parse_lora_arg(text: str) -> tuple[str, float]:
    """``FILE[:WEIGHT]``; a trailing ``:number`` is the weight (so Windows-style ``C:`` prefixes survive)."""
    path, sep, weight = text.rpartition(":")
    if sep:
        try:
            return path, float(weight)
        except ValueError:
            if path.lower().endswith(".safetensors") and not Path(text).exists():
                raise UserError(f"{text}: the weight after ':' must be a number, e.g. {path}:0.8") from None
    return text, 1.0
