"""The ``zlora`` command: one parser made from one module per command group (``register`` adds its subcommands,
each with its ``cmd_*`` function). User mistakes print one line each and exit 2; tracebacks are for our bugs."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from zlora import __version__
from zlora.cli import generate, lora, models, shapes, train, ui
from zlora.cli.common import COMMON
from zlora.errors import UserError

log = logging.getLogger("zlora")
GROUPS = (train, generate, models, lora, shapes, ui)  # in `zlora --help` order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zlora", description="Train and manage Z-Image LoRAs.", parents=[COMMON], allow_abbrev=False
    )
    parser.add_argument("--version", action="version", version=f"zlora {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


class Terminated(BaseException):
    """SIGTERM before the trainer's graceful stop is installed (start-up): end at once, with a message."""


_SIGNALLED: list[int] = []  # set once a SIGTERM has arrived


def _terminate(signum, frame) -> None:
    _SIGNALLED.append(signum)
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        return _main(argv)
    old = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, old)


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        quiet = os.environ.get("RANK", "0") != "0"  # the other processes of a launch: problems only
        level = (
            logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING if quiet else logging.INFO
        )
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
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
    except Terminated:
        print("zlora: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except Exception:
        # A SIGTERM that landed inside a library, e.g. mid-import, can come out as another error (a half-imported
        # numpy raised RecursionError): it is still the signal, not our bug.
        if _SIGNALLED:
            print("zlora: terminated (SIGTERM)", file=sys.stderr)
            return 143
        raise
