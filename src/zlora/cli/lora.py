"""``zlora lora inspect | convert | scale | merge | resize | bake | extract | formats``."""

from __future__ import annotations

import argparse

from zlora.cli.common import FOREIGN, WRITES, add, output, parse_lora_arg, subcommands
from zlora.errors import UserError
from zlora.lora.codecs import CODECS, choices, consumers_table
from zlora.vocab import SCALE_GROUPS


def register(sub) -> None:
    lora = subcommands(
        add(sub, "lora", "inspect, convert, scale, merge, resize, bake and extract LoRA files")
    )
    p = add(
        lora,
        "inspect",
        "format, rank, alpha, metadata and per-block delta norms",
        cmd_lora_inspect,
        [FOREIGN],
    )
    p.add_argument("file", help="a LoRA .safetensors")
    _dora_base(p)
    add(lora, "formats", "which LoRA format to hand to which tool", cmd_lora_formats)

    p = add(
        lora, "convert", "rewrite a LoRA for another tool (the delta is kept)", cmd_lora_convert, [WRITES]
    )
    _src_dst(p, "the LoRA to convert")
    offered = ", ".join(f"{c.name} ({c.label})" for c in CODECS.values() if c.offered)
    p.add_argument("--to", required=True, choices=choices(), metavar="FORMAT", help=offered)

    text = "multiply the delta per component and per layer (times --ratio)"
    p = add(lora, "scale", text, cmd_lora_scale, [WRITES, FOREIGN])
    _src_dst(p, "the LoRA to scale")
    p.add_argument("--ratio", type=float, default=1.0, help="overall multiplier")
    for option, (_, what) in SCALE_GROUPS.items():
        p.add_argument(
            f"--{option.replace('_', '-')}", type=float, default=None, help=f"multiplier for {what}"
        )
    p.add_argument("--out", dest="old_out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--layers", default=None, help='per-layer multipliers, e.g. "0-9:0.5,20-29:1.2"')
    _dora_base(p)

    p = add(
        lora, "merge", "merge LoRAs with weights (exact, or SVD to --rank)", cmd_lora_merge, [WRITES, FOREIGN]
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="FILE[:WEIGHT][[qk=X,...,layers=0-9:X;20-29:Y]]",
        help="each input may carry scale's options in brackets, for that input only",
    )
    p.add_argument("-o", "--output", required=True, help="output .safetensors")
    p.add_argument("--rank", type=int, default=None, help="reduce the merged LoRA to this rank (SVD)")
    _dora_base(p)

    p = add(
        lora,
        "resize",
        "reduce a LoRA's rank (SVD), reporting the kept energy",
        cmd_lora_resize,
        [WRITES, FOREIGN],
    )
    _src_dst(p, "the LoRA to resize")
    p.add_argument("--rank", type=int, required=True, help="the new rank (a positive integer)")
    _dora_base(p)

    p = add(
        lora, "bake", "write the base transformer with LoRAs merged in (streamed)", cmd_lora_bake, [WRITES]
    )
    p.add_argument("--base", required=True, help="model reference (hub id, diffusers folder, builtin:tiny)")
    p.add_argument(
        "--lora",
        action="append",
        required=True,
        metavar="FILE[:WEIGHT]",
        help="a LoRA and its weight; repeat for several",
    )
    p.add_argument(
        "-o",
        "--output",
        "--out",
        required=True,
        help="a .safetensors file, or a folder for from_pretrained (never inside the base model)",
    )

    p = add(
        lora, "extract", "a LoRA from a fine-tune's difference to its base (SVD)", cmd_lora_extract, [WRITES]
    )
    p.add_argument("--base", required=True, help="model reference or transformer .safetensors")
    p.add_argument("--tuned", required=True, help="model reference or transformer .safetensors")
    p.add_argument("--rank", type=int, required=True, help="rank of the extracted LoRA")
    p.add_argument("-o", "--output", required=True, help="output .safetensors")


def _dora_base(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base",
        default=None,
        help="DoRA files: the model they were trained on (their delta depends on its weights; default: the "
        "file's base_model, when it is here)",
    )


def _src_dst(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("src", help=what)
    p.add_argument("dst", nargs="?", help="output file (same as -o)")
    p.add_argument("-o", "--output", help="output .safetensors")


def cmd_lora_formats(args: argparse.Namespace) -> int:
    print(consumers_table())
    return 0


def cmd_lora_inspect(args: argparse.Namespace) -> int:
    from zlora.lora.tools import inspect_lora

    print(inspect_lora(args.file, args.allow_foreign, args.base))
    return 0


def cmd_lora_convert(args: argparse.Namespace) -> int:
    from zlora.lora.codecs import resolve_format
    from zlora.lora.tools import convert_lora

    out, fmt = output(args), resolve_format(args.to)
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
    out = output(args)
    scale_lora(args.src, out, mult, args.overwrite, args.allow_foreign, args.base)
    print(out)
    return 0


def cmd_lora_merge(args: argparse.Namespace) -> int:
    from zlora.lora.edit import parse_input_multipliers
    from zlora.lora.tools import merge_loras

    parsed = [parse_input_multipliers(x) for x in args.inputs]
    inputs = [parse_lora_arg(text) for text, _ in parsed]
    _report_kept(
        merge_loras(
            inputs,
            args.output,
            args.rank,
            [m for _, m in parsed],
            args.overwrite,
            args.allow_foreign,
            args.base,
        )
    )
    print(args.output)
    return 0


def cmd_lora_resize(args: argparse.Namespace) -> int:
    from zlora.lora.tools import resize_lora

    out = output(args)
    _report_kept(resize_lora(args.src, out, args.rank, args.overwrite, args.allow_foreign, args.base))
    print(out)
    return 0


def cmd_lora_bake(args: argparse.Namespace) -> int:
    from zlora.lora.tools import bake_loras

    changed = bake_loras(args.base, [parse_lora_arg(x) for x in args.lora], args.output, args.overwrite)
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
