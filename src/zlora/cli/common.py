"""What the command modules share: the parser helper every subcommand is made with, the option groups several
commands take, and ``FILE[:WEIGHT]`` parsing."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from zlora.errors import UserError

# -v works before or after the subcommand: every parser has it; SUPPRESS keeps a later parser from resetting what
# an earlier one set.
COMMON = argparse.ArgumentParser(add_help=False)
COMMON.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")

WRITES = argparse.ArgumentParser(add_help=False)
WRITES.add_argument("--overwrite", action="store_true", help="replace the output if it exists")

FOREIGN = argparse.ArgumentParser(add_help=False)
FOREIGN.add_argument(
    "--allow-foreign",
    action="store_true",
    help="process a LoRA for another model (SDXL, Flux, ...) with its keys as they are",
)

HUB = argparse.ArgumentParser(add_help=False)
HUB.add_argument("--endpoint", help="hub or mirror URL (default: $HF_ENDPOINT, else huggingface.co)")
HUB.add_argument(
    "--models-dir", help="where pulled models live (default: $ZLORA_MODELS_DIR, else ~/.cache/zlora/models)"
)
HUB.add_argument("--offline", action="store_true", help="never touch the network (also HF_HUB_OFFLINE=1)")


def add(group, name: str, text: str, func=None, parents=()) -> argparse.ArgumentParser:
    """A subcommand ``name`` of ``group`` (a subparsers object) that runs ``func(args)``."""
    p = group.add_parser(name, help=text, description=text, parents=[COMMON, *parents], allow_abbrev=False)
    if func:
        p.set_defaults(func=func)
    return p


def subcommands(parser: argparse.ArgumentParser, dest: str = "sub"):
    return parser.add_subparsers(dest=dest, required=True, metavar="SUB")


def parse_lora_arg(text: str) -> tuple[str, float]:
    """``FILE[:WEIGHT]``; a trailing ``:number`` is the weight (so Windows-style ``C:`` prefixes survive)."""
    path, sep, weight = text.rpartition(":")
    if sep:
        try:
            value = float(weight)
        except ValueError:
            if path.lower().endswith(".safetensors") and not Path(text).exists():
                raise UserError(f"{text}: the weight after ':' must be a number, e.g. {path}:0.8") from None
        else:
            if not math.isfinite(value):
                raise UserError(f"{text}: the weight after ':' must be a finite number, e.g. {path}:0.8")
            return path, value
    return text, 1.0


def output(args: argparse.Namespace) -> str:
    """``-o/--output``, or the positional ``dst`` kept from before the one-convention change."""
    dst, out = getattr(args, "dst", None), args.output
    if dst and out and dst != out:
        raise UserError(f"two outputs given ({dst} and -o {out}); give one")
    if not (dst or out):
        raise UserError("no output given; add -o FILE")
    return dst or out
