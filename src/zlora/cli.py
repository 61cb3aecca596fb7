"""The ``zlora`` command: one dispatch table of subcommands. User mistakes print one line each and exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from zlora import __version__
from zlora.cli_lora import (  # noqa: F401 - _parse_lora_arg: part of this module's interface (tests)
    _parse_lora_arg,
    cmd_lora_bake,
    cmd_lora_convert,
    cmd_lora_extract,
    cmd_lora_inspect,
    cmd_lora_merge,
    cmd_lora_resize,
    cmd_lora_scale,
)
from zlora.cli_shapes import register as register_shapes
from zlora.errors import UserError

log = logging.getLogger("zlora")


# ---------------------------------------------------------------- train / config
def cmd_train(args: argparse.Namespace) -> int:
    from zlora.config import load_config
    from zlora.train.trainer import TrainingInterrupted, run_training

    cfg = load_config(args.config, args.overrides)
    try:
        lora = run_training(cfg, force_resume=args.force_resume)
    except TrainingInterrupted as e:
        print(f"zlora: {e}", file=sys.stderr)
        return e.exit_code
    if os.environ.get("RANK", "0") != "0":  # a distributed launch: process 0 reports
        return 0
    run_dir = lora.parent
    grid = sorted((run_dir / "samples").glob("step-??????.png"))
    print(f"LoRA:         {lora}")
    print(f"preview grid: {grid[-1] if grid else '(no sample.prompts set)'}")
    print(f"loss plot:    {run_dir / 'loss.png'}")
    if cfg.model.name_or_path == "builtin:shapes" and grid:
        print(f"judge scores: zlora shapes report {run_dir}")
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


def cmd_config_import(args: argparse.Namespace) -> int:
    import yaml

    from zlora.config import parse_config, read_yaml
    from zlora.config.aitk import import_aitk, is_aitk
    from zlora.utils.io import atomic_write_text, check_output

    check_output(args.output, [args.job], overwrite=args.overwrite)
    path = Path(args.job)
    if not path.is_file():
        raise UserError(f"job file not found: {path}")
    try:
        data = read_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not is_aitk(data):
        raise UserError(
            f"{path} is not an ai-toolkit job file (no config.process); zlora configs need no import"
        )
    mapped, notes = import_aitk(data)
    for note in notes:
        print(f"{path}: {note}", file=sys.stderr)
    parse_config(mapped, source=str(path))  # every problem now, not at `zlora train`
    atomic_write_text(args.output, yaml.safe_dump(mapped, sort_keys=False, allow_unicode=True))
    print(args.output)
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


# ---------------------------------------------------------------- generate
def cmd_generate(args: argparse.Namespace) -> int:
    from zlora.config.schema import fill_sampling
    from zlora.generate import generate_image, image_format, save_image
    from zlora.utils.io import atomic_write, check_output

    vars(args).update(fill_sampling(args.model, vars(args)))
    loras = [_parse_lora_arg(x) for x in args.lora]
    fmt = image_format(args.output)
    check_output(args.output, [p for p, _ in loras], overwrite=args.overwrite)
    image = generate_image(
        model=args.model,
        loras=loras,
        prompt=args.prompt,
        negative_prompt=args.negative,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        width=args.width,
        height=args.height,
        device=args.device,
        dtype=args.dtype,
    )
    settings = {
        "model": args.model,
        "loras": [[p, w] for p, w in loras],
        "prompt": args.prompt,
        "negative": args.negative,
        "steps": args.steps,
        "guidance": args.guidance,
        "seed": args.seed,
        "width": args.width,
        "height": args.height,
        "zlora": __version__,
    }
    atomic_write(args.output, lambda p: save_image(image, p, fmt, settings))
    print(args.output)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from zlora.bench import main as bench

    return bench(args)


def cmd_ui(args: argparse.Namespace) -> int:
    from zlora.ui.server import serve

    serve(
        args.host, args.port, Path(args.data_dir) if args.data_dir else None, args.token, args.max_upload_mb
    )
    return 0


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    # -v works before or after the subcommand: every parser has it; SUPPRESS keeps a later parser from
    # resetting what an earlier one set.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
    )
    parser = argparse.ArgumentParser(
        prog="zlora", description="Train and manage Z-Image LoRAs.", parents=[common], allow_abbrev=False
    )
    parser.add_argument("--version", action="version", version=f"zlora {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(group, name: str, text: str, func=None, parents=()):
        p = group.add_parser(
            name, help=text, description=text, parents=[common, *parents], allow_abbrev=False
        )
        if func:
            p.set_defaults(func=func)
        return p

    writes = argparse.ArgumentParser(add_help=False)
    writes.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    foreign = argparse.ArgumentParser(add_help=False)
    foreign.add_argument(
        "--allow-foreign",
        action="store_true",
        help="process a LoRA for another model (SDXL, Flux, ...) with its keys as they are",
    )

    p = add(sub, "train", "train a LoRA from a YAML config (the same command resumes)", cmd_train)
    p.add_argument("config", help="YAML config (zlora's, e.g. configs/quickstart.yaml)")
    p.add_argument("overrides", nargs="*", metavar="a.b=c", help="override settings, e.g. train.steps=100")
    p.add_argument(
        "--force-resume",
        action="store_true",
        help="resume even though settings changed since the checkpoint; the new ones apply from it",
    )

    p = add(sub, "generate", "generate an image with a base model and LoRAs", cmd_generate, [writes])
    p.add_argument("--model", required=True, help="hub id, diffusers folder, builtin:shapes or builtin:tiny")
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:WEIGHT]",
        help="a LoRA .safetensors and its weight (default 1); repeat for several",
    )
    p.add_argument("--prompt", required=True, help="the text to render")
    p.add_argument("--negative", default="", help="negative prompt (with --guidance > 0)")
    p.add_argument(
        "--steps", type=int, help="scheduler steps (default 9: Turbo's 8 DiT forwards; builtin:shapes 20)"
    )
    p.add_argument(
        "--guidance", type=float, help="CFG scale (default 0 for Turbo; De-Turbo/Base: 2-4; builtin:shapes 1)"
    )
    p.add_argument("--seed", type=int, default=42, help="random seed (same seed, same image)")
    p.add_argument(
        "--width", type=int, help="image width, a multiple of 16 (default 1024; builtin:shapes 64)"
    )
    p.add_argument(
        "--height", type=int, help="image height, a multiple of 16 (default 1024; builtin:shapes 64)"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="compute dtype (auto: bf16 on CUDA, fp32 on CPU)",
    )
    p.add_argument("-o", "--output", "--out", default="out.png", help="image file (.png, .jpg, .webp)")

    p = add(
        sub, "bench", "time the trainer's step against a bare peft + AdamW loop on the same model", cmd_bench
    )
    p.add_argument(
        "--size",
        choices=["tiny", "real"],
        default="tiny",
        help="builtin:tiny, or the real transformer config with random weights (no download; ~12 GB)",
    )
    p.add_argument("--res", type=int, default=512, help="image side in pixels (a multiple of 16)")
    p.add_argument("--batch-size", type=int, default=1, help="samples per step")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank")
    p.add_argument("--steps", type=int, default=10, help="timed steps (each path)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, caches)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="a.b=c",
        help="config overrides, e.g. --set train.compile=false --set train.gradient_checkpointing=false",
    )
    p.add_argument("--json", help="also write the results to this JSON file")

    register_shapes(sub, add)
    p = add(sub, "ui", "serve the web UI (New Training Job form, job queue, live progress)", cmd_ui)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (other than loopback: needs --token)"
    )
    p.add_argument("--port", type=int, default=8675, help="port to listen on")
    p.add_argument(
        "--data-dir",
        help="job store and default output folder (default: $ZLORA_UI_DIR, else ~/.cache/zlora/ui)",
    )
    p.add_argument("--token", help="require this token for every page and API call (also ZLORA_UI_TOKEN)")
    p.add_argument(
        "--max-upload-mb", type=int, default=50, help="largest image or caption file accepted by upload"
    )

    cfg = add(sub, "config", "check or print a config").add_subparsers(
        dest="sub", required=True, metavar="SUB"
    )
    for name, func, text in (
        ("validate", cmd_config_validate, "report every problem in a config"),
        ("show", cmd_config_show, "print the fully resolved config"),
    ):
        p = add(cfg, name, text, func)
        p.add_argument("config", help="YAML config")
        p.add_argument(
            "overrides", nargs="*", metavar="a.b=c", help="override settings, e.g. train.steps=100"
        )

    p = add(
        cfg,
        "import",
        "write the zlora config equivalent to an ai-toolkit job file",
        cmd_config_import,
        [writes],
    )
    p.add_argument("job", help="ai-toolkit job YAML (job: extension, config.process[...])")
    p.add_argument("-o", "--output", required=True, help="the zlora config to write")

    models = add(sub, "models", "pull, verify, export and list base models").add_subparsers(
        dest="sub", required=True, metavar="SUB"
    )
    p = add(models, "make-tiny", "write the tiny random Z-Image (tests, demo) to DIR", cmd_models_make_tiny)
    p.add_argument("dir", help="a new or empty folder")
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    hub = argparse.ArgumentParser(add_help=False)
    hub.add_argument("--endpoint", help="hub or mirror URL (default: $HF_ENDPOINT, else huggingface.co)")
    hub.add_argument(
        "--models-dir",
        help="where pulled models live (default: $ZLORA_MODELS_DIR, else ~/.cache/zlora/models)",
    )
    hub.add_argument("--offline", action="store_true", help="never touch the network (also HF_HUB_OFFLINE=1)")
    p = add(
        models,
        "pull",
        "download what a Z-Image pipeline needs (or one file), verified",
        cmd_models_pull,
        [hub],
    )
    p.add_argument("ref", help="org/name[@revision] or org/name/path/file.safetensors")
    p.add_argument("--revision", help="branch, tag or commit (default main)")
    p.add_argument("--to", help="target folder (default: <models-dir>/<org>--<name>)")
    p = add(
        models, "verify", "sha256 of every file against the manifest (or the hub)", cmd_models_verify, [hub]
    )
    p.add_argument("target", help="a model folder or org/name")
    p.add_argument("--fix", action="store_true", help="re-fetch only the bad files")
    p = add(
        models,
        "export",
        "copy a model out of the HF cache into a plain folder (hardlinks if possible)",
        cmd_models_export,
    )
    p.add_argument("ref", help="org/name[@revision] in the HF cache")
    p.add_argument("--to", required=True, help="target folder")
    add(models, "list", "models in the models folder and the HF cache", cmd_models_list, [hub])

    lora = add(
        sub, "lora", "inspect, convert, scale, merge, resize, bake and extract LoRA files"
    ).add_subparsers(dest="sub", required=True, metavar="SUB")
    p = add(
        lora,
        "inspect",
        "format, rank, alpha, metadata and per-block delta norms",
        cmd_lora_inspect,
        [foreign],
    )
    p.add_argument("file", help="a LoRA .safetensors")
    p = add(
        lora, "convert", "rewrite a LoRA for another tool (the delta is kept)", cmd_lora_convert, [writes]
    )
    p.add_argument("src", help="the LoRA to convert")
    p.add_argument("dst", nargs="?", help="output file (same as -o)")
    p.add_argument("-o", "--output", help="output .safetensors")
    p.add_argument(
        "--to",
        required=True,
        choices=["zlora", "diffusers", "comfy", "comfy-fused", "kohya"],
        help="zlora (diffusers and ComfyUI), diffusers, comfy (ComfyUI incl. its bypass loader; "
        "= comfy-fused), kohya (musubi-tuner, sd-scripts, ComfyUI)",
    )
    p = add(
        lora,
        "scale",
        "multiply the delta per component and per layer (times --ratio)",
        cmd_lora_scale,
        [writes, foreign],
    )
    p.add_argument("src", help="the LoRA to scale")
    p.add_argument("dst", nargs="?", help="output file (same as -o)")
    p.add_argument("-o", "--output", help="output .safetensors")
    p.add_argument("--ratio", type=float, default=1.0, help="overall multiplier")
    for comp, text in (
        ("adaln", "adaLN_modulation"),
        ("qk", "to_q and to_k"),
        ("v", "to_v"),
        ("attn-out", "attention to_out"),
        ("ffn", "w1, w2 and w3"),
        ("w1", "w1"),
        ("w2", "w2"),
        ("w3", "w3"),
    ):
        p.add_argument(f"--{comp}", type=float, default=None, help=f"multiplier for {text}")
    p.add_argument("--out", dest="old_out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--layers", default=None, help='per-layer multipliers, e.g. "0-9:0.5,20-29:1.2"')
    p = add(
        lora, "merge", "merge LoRAs with weights (exact, or SVD to --rank)", cmd_lora_merge, [writes, foreign]
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="FILE[:WEIGHT][[qk=X,...,layers=0-9:X;20-29:Y]]",
        help="each input may carry scale's options in brackets, for that input only",
    )
    p.add_argument("-o", "--output", required=True, help="output .safetensors")
    p.add_argument("--rank", type=int, default=None, help="reduce the merged LoRA to this rank (SVD)")
    p = add(
        lora,
        "resize",
        "reduce a LoRA's rank (SVD), reporting the kept energy",
        cmd_lora_resize,
        [writes, foreign],
    )
    p.add_argument("src", help="the LoRA to resize")
    p.add_argument("dst", nargs="?", help="output file (same as -o)")
    p.add_argument("-o", "--output", help="output .safetensors")
    p.add_argument("--rank", type=int, required=True, help="the new rank (a positive integer)")
    p = add(
        lora, "bake", "write the base transformer with LoRAs merged in (streamed)", cmd_lora_bake, [writes]
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
        lora, "extract", "a LoRA from a fine-tune's difference to its base (SVD)", cmd_lora_extract, [writes]
    )
    p.add_argument("--base", required=True, help="model reference or transformer .safetensors")
    p.add_argument("--tuned", required=True, help="model reference or transformer .safetensors")
    p.add_argument("--rank", type=int, required=True, help="rank of the extracted LoRA")
    p.add_argument("-o", "--output", required=True, help="output .safetensors")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        quiet = (
            os.environ.get("RANK", "0") != "0"
        )  # the other processes of a distributed launch: problems only
        logging.basicConfig(
            level=logging.DEBUG
            if getattr(args, "verbose", False)
            else logging.WARNING
            if quiet
            else logging.INFO,
            format="%(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        for noisy in ("httpx", "httpcore", "urllib3", "filelock", "PIL", "matplotlib"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        from zlora.utils.quiet import quiet_torchao  # before any library imports torchao

        quiet_torchao()
        return args.func(args)
    except UserError as e:
        for line in e.problems:
            print(f"zlora: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zlora: aborted", file=sys.stderr)
        return 130
