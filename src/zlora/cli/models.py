"""``zlora models pull | verify | export | list | make-tiny``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zlora.cli.common import HUB, add, subcommands
from zlora.errors import UserError


def register(sub) -> None:
    models = subcommands(add(sub, "models", "pull, verify, export and list base models"))
    p = add(models, "make-tiny", "write the tiny random Z-Image (tests, demo) to DIR", cmd_models_make_tiny)
    p.add_argument("dir", help="a new or empty folder")
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    p = add(
        models,
        "pull",
        "download what a Z-Image pipeline needs (or one file), verified",
        cmd_models_pull,
        [HUB],
    )
    p.add_argument("ref", help="org/name[@revision] or org/name/path/file.safetensors")
    p.add_argument("--revision", help="branch, tag or commit (default main)")
    p.add_argument("--to", help="target folder (default: <models-dir>/<org>--<name>)")
    p = add(
        models, "verify", "sha256 of every file against the manifest (or the hub)", cmd_models_verify, [HUB]
    )
    p.add_argument("target", help="a model folder or org/name")
    p.add_argument("--fix", action="store_true", help="re-fetch only the bad files")
    text = "copy a model out of the HF cache into a plain folder (hardlinks if possible)"
    p = add(models, "export", text, cmd_models_export)
    p.add_argument("ref", help="org/name[@revision] in the HF cache")
    p.add_argument("--to", required=True, help="target folder")
    add(models, "list", "models in the models folder and the HF cache", cmd_models_list, [HUB])


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
