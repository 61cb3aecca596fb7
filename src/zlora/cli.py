"""The ``zlora`` command: one dispatch table of subcommands. User mistakes print one line each and exit 2."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from zlora import __version__
from zlora.errors import UserError

log = logging.getLogger("zlora")


# ---------------------------------------------------------------- train / config
def cmd_train(args: argparse.Namespace) -> int:
    from zlora.config import load_config
    from zlora.train.trainer import TrainingInterrupted, run_training

    cfg = load_config(args.config, args.overrides)
    try:
        lora = run_training(cfg)
    except TrainingInterrupted as e:
        print(f"zlora: {e}", file=sys.stderr)
        return e.exit_code
    run_dir = lora.parent
    grid = sorted((run_dir / "samples").glob("step-??????.png"))
    print(f"LoRA:         {lora}")
    print(f"preview grid: {grid[-1] if grid else '(no sample.prompts set)'}")
    print(f"loss plot:    {run_dir / 'loss.png'}")
    return 0


def cmd_config_validate(args: argparse.Namespace) -> int:
    from zlora.config import load_config

    load_config(args.config, args.overrides)
    print(f"{args.config}: OK")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from zlora.config import dump_config, load_config

    print(dump_config(load_config(args.config, args.overrides, check_files=False)), end="")
    return 0


# ---------------------------------------------------------------- models
def _hub(args: argparse.Namespace):
    from zlora.hub.manifest import hub_settings

    return hub_settings(args.models_dir, args.endpoint, args.offline)


def cmd_models_pull(args: argparse.Namespace) -> int:
    from zlora.hub.pull import pull, split_ref

    folder = pull(args.ref, _hub(args), revision=args.revision, to=Path(args.to) if args.to else None)
    _, _, file = split_ref(args.ref)
    print(f"{args.ref}: complete and verified in {folder}")
    print("use it with:" if not file else "use it with (training adapter):")
    print(f"  assistant_lora_path: {folder / file}" if file else f"model:\n  name_or_path: {folder}")
    return 0


def cmd_models_verify(args: argparse.Namespace) -> int:
    from zlora.hub.local import verify

    problems = verify(args.target, _hub(args), fix=args.fix)
    for p in problems:
        print(f"BAD  {p}")
    if problems:
        print(f"{len(problems)} bad file(s); run again with --fix to re-fetch only those", file=sys.stderr)
        return 1
    print(f"{args.target}: all files match{' after --fix' if args.fix else ''}")
    return 0


def cmd_models_export(args: argparse.Namespace) -> int:
    from zlora.hub.local import export

    folder = export(args.ref, Path(args.to))
    print(f"exported {args.ref} to {folder} (files verified); use it with:")
    print(f"model:\n  name_or_path: {folder}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from zlora.hub.local import list_models

    rows = list_models(_hub(args))
    if not rows:
        print("no models found (models folder and HF cache are empty)")
        return 0
    cols = ["name", "revision", "size", "complete", "location"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    for r in [dict(zip(cols, cols, strict=True)), *rows]:
        print("  ".join(r[c].ljust(widths[c]) for c in cols).rstrip())
    return 0


def cmd_models_make_tiny(args: argparse.Namespace) -> int:
    from zlora.models.tiny import make_tiny

    out = Path(args.dir)
    if out.exists() and any(out.iterdir()) and not (out / "model_index.json").is_file():
        raise UserError(f"{out} exists and is not empty; choose a new folder")
    print(make_tiny(out, seed=args.seed))
    return 0


# ---------------------------------------------------------------- lora
def cmd_lora_inspect(args: argparse.Namespace) -> int:
    from zlora.lora.tools import inspect_lora

    print(inspect_lora(args.file))
    return 0


def cmd_lora_convert(args: argparse.Namespace) -> int:
    from zlora.lora.tools import convert_lora

    source = convert_lora(args.src, args.dst, args.to)
    print(f"{args.src} ({source}) -> {args.dst} ({args.to})")
    return 0


def _report_kept(kept: dict[str, float]) -> None:
    if kept:
        worst = min(kept, key=kept.get)
        mean = sum(kept.values()) / len(kept)
        # kept energy e = 1 - (relative Frobenius error)^2
        print(f"kept energy: mean {mean:.4f}, lowest {kept[worst]:.4f} ({worst}); "
              f"relative error there {max(0.0, 1 - kept[worst]) ** 0.5:.4f}")  # fmt: skip


def cmd_lora_scale(args: argparse.Namespace) -> int:
    from zlora.lora.edit import Multipliers, parse_layer_spec
    from zlora.lora.tools import scale_lora

    comps = {c: getattr(args, c) for c in ("adaln", "qk", "v", "out", "ffn", "w1", "w2", "w3")}
    if comps["ffn"] is not None and any(comps[w] is not None for w in ("w1", "w2", "w3")):
        raise UserError("use either --ffn or --w1/--w2/--w3, not both")
    mult = Multipliers(
        args.ratio, {c: v for c, v in comps.items() if v is not None}, parse_layer_spec(args.layers)
    )
    scale_lora(args.src, args.dst, mult)
    print(args.dst)
    return 0


def cmd_lora_merge(args: argparse.Namespace) -> int:
    from zlora.lora.edit import parse_input_multipliers
    from zlora.lora.tools import merge_loras

    parsed = [parse_input_multipliers(x) for x in args.inputs]
    inputs = [_parse_lora_arg(text) for text, _ in parsed]
    _report_kept(merge_loras(inputs, args.output, args.rank, [m for _, m in parsed]))
    print(args.output)
    return 0


def cmd_lora_resize(args: argparse.Namespace) -> int:
    from zlora.lora.tools import resize_lora

    _report_kept(resize_lora(args.src, args.dst, args.rank))
    print(args.dst)
    return 0


def cmd_lora_bake(args: argparse.Namespace) -> int:
    from zlora.lora.tools import bake_loras

    changed = bake_loras(args.base, [_parse_lora_arg(x) for x in args.lora], args.out)
    print(f"{args.out}: {len(changed)} weights changed")
    return 0


def cmd_lora_extract(args: argparse.Namespace) -> int:
    from zlora.lora.tools import extract_lora

    errors = extract_lora(args.base, args.tuned, args.rank, args.output)
    worst = max(errors, key=errors.get)
    print(f"{len(errors)} modules; relative error: mean {sum(errors.values()) / len(errors):.4f}, "
          f"worst {errors[worst]:.4f} ({worst})")  # fmt: skip
    print(args.output)
    return 0


# ---------------------------------------------------------------- generate
def _parse_lora_arg(text: str) -> tuple[str, float]:
    """``FILE[:WEIGHT]``; a trailing ``:number`` is the weight (so Windows-style ``C:`` prefixes survive)."""
    path, sep, weight = text.rpartition(":")
    if sep:
        try:
            return path, float(weight)
        except ValueError:
            pass
    return text, 1.0


def cmd_generate(args: argparse.Namespace) -> int:
    from zlora.generate import generate_image
    from zlora.utils.io import atomic_write

    loras = [_parse_lora_arg(x) for x in args.lora]
    image = generate_image(
        model=args.model, loras=loras, prompt=args.prompt, negative_prompt=args.negative, steps=args.steps,
        guidance=args.guidance, seed=args.seed, width=args.width, height=args.height,
        device=args.device, dtype=args.dtype,
    )  # fmt: skip
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(Path(args.out).suffix.lower(), "PNG")
    atomic_write(args.out, lambda p: image.save(p, format=fmt))
    print(args.out)
    return 0


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zlora", description="Train and manage Z-Image LoRAs.")
    parser.add_argument("--version", action="version", version=f"zlora {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a LoRA from a YAML config (resumes automatically)")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="a.b=c", help="override settings, e.g. train.steps=100")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="generate an image with a base model and LoRAs")
    p.add_argument("--model", required=True, help="hub id, diffusers folder or builtin:tiny")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative", default="", help="negative prompt (with --guidance > 0)")
    p.add_argument("--steps", type=int, default=9, help="scheduler steps (Turbo: 9 = 8 DiT forwards)")
    p.add_argument("--guidance", type=float, default=0.0, help="CFG scale (Turbo: 0; De-Turbo/Base: 2-4)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--out", default="out.png")
    p.set_defaults(func=cmd_generate)

    cfg = sub.add_parser("config", help="check or print a config").add_subparsers(dest="sub", required=True)
    for name, func, text in (("validate", cmd_config_validate, "report every problem in a config"),
                             ("show", cmd_config_show, "print the fully resolved config")):  # fmt: skip
        p = cfg.add_parser(name, help=text)
        p.add_argument("config")
        p.add_argument("overrides", nargs="*", metavar="a.b=c")
        p.set_defaults(func=func)

    models = sub.add_parser("models", help="model files").add_subparsers(dest="sub", required=True)
    p = models.add_parser("make-tiny", help="write the tiny random Z-Image (tests, demo) to DIR")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_models_make_tiny)
    hub = argparse.ArgumentParser(add_help=False)
    hub.add_argument("--endpoint", help="hub or mirror URL (default: $HF_ENDPOINT, else huggingface.co)")
    hub.add_argument(
        "--models-dir",
        help="where pulled models live (default: $ZLORA_MODELS_DIR, else ~/.cache/zlora/models)",
    )
    hub.add_argument("--offline", action="store_true", help="never touch the network (also HF_HUB_OFFLINE=1)")
    p = models.add_parser(
        "pull", parents=[hub], help="download what a Z-Image pipeline needs (or one file), verified"
    )
    p.add_argument("ref", help="org/name[@revision] or org/name/path/file.safetensors")
    p.add_argument("--revision")
    p.add_argument("--to", help="target folder (default: <models-dir>/<org>--<name>)")
    p.set_defaults(func=cmd_models_pull)
    p = models.add_parser(
        "verify", parents=[hub], help="sha256 of every file against the manifest (or the hub)"
    )
    p.add_argument("target", help="a model folder or org/name")
    p.add_argument("--fix", action="store_true", help="re-fetch only the bad files")
    p.set_defaults(func=cmd_models_verify)
    p = models.add_parser(
        "export", help="copy a model out of the HF cache into a plain folder (hardlinks if possible)"
    )
    p.add_argument("ref")
    p.add_argument("--to", required=True)
    p.set_defaults(func=cmd_models_export)
    p = models.add_parser("list", parents=[hub], help="models in the models folder and the HF cache")
    p.set_defaults(func=cmd_models_list)

    lora = sub.add_parser("lora", help="inspect and convert LoRA files").add_subparsers(
        dest="sub", required=True
    )
    p = lora.add_parser("inspect", help="format, rank, alpha, metadata and per-block delta norms")
    p.add_argument("file")
    p.set_defaults(func=cmd_lora_inspect)
    p = lora.add_parser("convert", help="rewrite a LoRA in another key format (lossless)")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--to", required=True, choices=["zlora", "diffusers", "kohya", "comfy-fused"])
    p.set_defaults(func=cmd_lora_convert)
    p = lora.add_parser("scale", help="multiply the delta per component and per layer (times --ratio)")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--ratio", type=float, default=1.0, help="overall multiplier")
    for comp, text in (("adaln", "adaLN_modulation"), ("qk", "to_q and to_k"), ("v", "to_v"), ("out", "to_out"),
                       ("ffn", "w1, w2 and w3"), ("w1", "w1"), ("w2", "w2"), ("w3", "w3")):  # fmt: skip
        p.add_argument(f"--{comp}", type=float, default=None, help=f"multiplier for {text}")
    p.add_argument("--layers", default=None, help='per-layer multipliers, e.g. "0-9:0.5,20-29:1.2"')
    p.set_defaults(func=cmd_lora_scale)
    p = lora.add_parser("merge", help="merge LoRAs with weights (exact, or SVD to --rank)")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="FILE[:WEIGHT][[qk=X,...,layers=0-9:X;20-29:Y]]",
        help="each input may carry scale's options in brackets, for that input only",
    )
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--rank", type=int, default=None, help="reduce the merged LoRA to this rank (SVD)")
    p.set_defaults(func=cmd_lora_merge)
    p = lora.add_parser("resize", help="reduce a LoRA's rank (SVD), reporting the kept energy")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--rank", type=int, required=True)
    p.set_defaults(func=cmd_lora_resize)
    p = lora.add_parser("bake", help="write the base transformer with LoRAs merged in (streamed)")
    p.add_argument("--base", required=True, help="model reference (hub id, diffusers folder, builtin:tiny)")
    p.add_argument("--lora", action="append", required=True, metavar="FILE[:WEIGHT]")
    p.add_argument("--out", required=True, help="a .safetensors file, or a folder for from_pretrained")
    p.set_defaults(func=cmd_lora_bake)
    p = lora.add_parser("extract", help="a LoRA from a fine-tune's difference to its base (SVD)")
    p.add_argument("--base", required=True, help="model reference or transformer .safetensors")
    p.add_argument("--tuned", required=True, help="model reference or transformer .safetensors")
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_lora_extract)
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )  # fmt: skip
    for noisy in ("httpx", "urllib3", "filelock", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from diffusers.utils import logging as df_logging

    df_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except UserError as e:
        for line in e.problems:
            print(f"zlora: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zlora: aborted", file=sys.stderr)
        return 130
