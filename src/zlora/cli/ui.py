"""``zlora ui`` (the web UI) and ``zlora bench`` (the trainer's step against a bare loop)."""

from __future__ import annotations

import argparse
from pathlib import Path

from zlora.cli.common import add


def register(sub) -> None:
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
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another name the UI is reached by (a Host header it accepts); repeat for several",
    )
    p.add_argument(
        "--max-upload-mb", type=int, default=50, help="largest image or caption file accepted by upload"
    )

    text = "time the trainer's step against a bare peft + AdamW loop on the same model"
    p = add(sub, "bench", text, cmd_bench)
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


def cmd_ui(args: argparse.Namespace) -> int:
    from zlora.ui.server import serve

    data_dir = Path(args.data_dir) if args.data_dir else None
    serve(args.host, args.port, data_dir, args.token, args.max_upload_mb, args.allowed_host)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from zlora.bench import main as bench

    return bench(args)
