"""``zlora train`` and ``zlora config validate | show | import``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from zlora.cli.common import WRITES, add, subcommands
from zlora.errors import UserError


def register(sub) -> None:
    p = add(sub, "train", "train a LoRA from a YAML config (the same command resumes)", cmd_train)
    p.add_argument("config", help="YAML config (zlora's, e.g. configs/quickstart.yaml)")
    p.add_argument("overrides", nargs="*", metavar="a.b=c", help="override settings, e.g. train.steps=100")
    p.add_argument(
        "--force-resume",
        action="store_true",
        help="resume even though settings changed since the checkpoint; the new ones apply from it",
    )
    cfg = subcommands(add(sub, "config", "check or print a config"))
    for name, func, text in (
        ("validate", cmd_config_validate, "report every problem in a config"),
        ("show", cmd_config_show, "print the fully resolved config"),
    ):
        p = add(cfg, name, text, func)
        p.add_argument("config", help="YAML config")
        p.add_argument(
            "overrides", nargs="*", metavar="a.b=c", help="override settings, e.g. train.steps=100"
        )
    text = "the noise levels a config trains at: sampling density and loss weight at t = 0, 50, ..., 1000"
    p = add(cfg, "timesteps", text, cmd_config_timesteps)
    p.add_argument("config", help="YAML config (zlora's or an ai-toolkit job)")
    p.add_argument(
        "overrides", nargs="*", metavar="a.b=c", help="override settings, e.g. train.timestep_type=shift"
    )
    p.add_argument(
        "--json", action="store_true", help='print {"t": [...], "density": [...], "weight": [...]}'
    )
    text = "write the zlora config equivalent to an ai-toolkit job file"
    p = add(cfg, "import", text, cmd_config_import, [WRITES])
    p.add_argument("job", help="ai-toolkit job YAML (job: extension, config.process[...])")
    p.add_argument("-o", "--output", required=True, help="the zlora config to write")


def cmd_train(args: argparse.Namespace) -> int:
    from zlora.config import load_config
    from zlora.runfolder import RunFolder
    from zlora.train.trainer import TrainingDiverged, TrainingInterrupted, run_training

    cfg = load_config(args.config, args.overrides)
    try:
        lora = run_training(cfg, force_resume=args.force_resume)
    except TrainingInterrupted as e:
        print(f"zlora: {e}", file=sys.stderr)
        return e.exit_code
    except TrainingDiverged as e:
        print(f"zlora: error: {e}", file=sys.stderr)
        return e.exit_code
    if os.environ.get("RANK", "0") != "0":  # a distributed launch: process 0 reports
        return 0
    run = RunFolder.of(cfg.job.output_dir, cfg.job.name)
    grids = run.grids()
    print(f"LoRA:         {lora}")
    print(f"preview grid: {grids[-1] if grids else '(no sample.prompts set)'}")
    print(f"loss plot:    {run.loss_plot}")
    if cfg.model.name_or_path == "builtin:shapes" and grids:
        print(f"judge scores: zlora shapes report {run.root}")
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


def cmd_config_timesteps(args: argparse.Namespace) -> int:
    """ai-toolkit's scale: t = 1000 is pure noise, t / 1000 the noise level s; density per unit of s."""
    import json

    from zlora.config import load_config
    from zlora.train.curves import timestep_table

    table = timestep_table(load_config(args.config, args.overrides, check_files=False).train)
    if args.json:
        print(json.dumps(table))
        return 0
    print(f"{'t':>5}  {'density':>8}  {'weight':>7}")
    for t, d, w in zip(table["t"], table["density"], table["weight"], strict=True):
        print(f"{t:>5}  {d:>8.4f}  {w:>7.4f}")
    return 0


def cmd_config_import(args: argparse.Namespace) -> int:
    import yaml

    from zlora.config import parse_config
    from zlora.config.aitk import import_aitk, is_aitk
    from zlora.config.load import read_yaml_file
    from zlora.utils.io import atomic_write_text, check_output

    check_output(args.output, [args.job], overwrite=args.overwrite)
    path = Path(args.job)
    if not path.is_file():
        raise UserError(f"job file not found: {path}")
    data = read_yaml_file(path)
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
