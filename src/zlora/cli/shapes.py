"""``zlora shapes eval | report``: judge the pretrained demo model (builtin:shapes) and LoRAs trained on it."""

from __future__ import annotations

import argparse
import json

from zlora.cli.common import add, parse_lora_arg, subcommands
from zlora.errors import UserError
from zlora.runfolder import RunFolder


def register(sub) -> None:
    shapes = subcommands(
        add(sub, "shapes", "score builtin:shapes images with the pixel judge"), "shapes_command"
    )
    p = add(shapes, "eval", "prompt adherence of the base model; with --lora: concept and drift", cmd_eval)
    p.add_argument("--model", default="builtin:shapes", help="the model to sample (default builtin:shapes)")
    p.add_argument("--lora", metavar="FILE[:WEIGHT]", help="a LoRA trained on builtin:shapes")
    p.add_argument("--trigger", default="zlr", help="the LoRA's trigger word (it names the concept: a star)")
    p.add_argument("--prompts", type=int, default=64, help="prompts per set (every shape and colour in turn)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    p.add_argument("--steps", type=int, help="scheduler steps (default 20)")
    p.add_argument("--guidance", type=float, help="guidance scale (default 1)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    p.add_argument("--json", help="also write the scores to this JSON file")
    p.add_argument("--grid", help="also write a grid of the first 8 prompts x seeds per set (.png)")
    p = add(shapes, "report", "the judge's scores per preview step of a training run", cmd_report)
    p.add_argument("run_dir", help="run folder (output/<job.name>) of a run on builtin:shapes")


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from zlora.config.presets import fill_sampling
    from zlora.generate import add_loras, check_loras, load_pipeline
    from zlora.models.load import resolve_device, resolve_model
    from zlora.shapes.evaluate import judge_images, sample_batch, summarise
    from zlora.shapes.world import eval_prompts
    from zlora.utils.io import atomic_write, atomic_write_text

    if args.prompts < 1 or args.seeds < 1 or (args.steps is not None and args.steps < 1):
        raise UserError("--prompts, --seeds and --steps must be at least 1")
    how = fill_sampling("builtin:shapes", vars(args))  # the world's settings, whichever --model
    steps, guidance = how["steps"], how["guidance"]
    dev = resolve_device(args.device, "--device")
    loras = [parse_lora_arg(args.lora)] if args.lora else []
    read = check_loras(resolve_model(args.model).folder, loras)  # before anything is sampled
    pipe = load_pipeline(args.model, [], dev, torch.float32)  # the base model's images first, then the LoRA's
    seeds = list(range(args.seeds))
    plain = [p for p in eval_prompts(args.prompts) for _ in seeds]
    trig = [p for p in eval_prompts(args.prompts, shape_word=args.trigger) for _ in seeds]
    seed_list = seeds * args.prompts

    def run(prompts):
        return sample_batch(pipe, prompts, seed_list, steps, guidance, how["width"], how["height"])

    sets = {}
    sets["base"] = run(plain)
    base_j = judge_images(sets["base"], plain, seed_list, args.trigger)
    result = {
        "base": summarise(base_j),
        "model": args.model,
        "steps": steps,
        "guidance": guidance,
        "images_per_set": len(plain),
    }
    print(_line("base model", result["base"]))
    if loras:
        add_loras(pipe, loras, read)
        sets["lora"], sets["lora_trigger"] = run(plain), run(trig)
        base = {(j.prompt, j.seed): j.key() for j in base_j}
        result["lora"] = summarise(
            judge_images(sets["lora"] + sets["lora_trigger"], plain + trig, seed_list * 2, args.trigger), base
        )
        result["lora_file"] = args.lora
        print(_line(f"with {args.lora}", result["lora"]))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    if args.grid:
        grid = _grid({k: v[: 8 * args.seeds] for k, v in sets.items()}, args.seeds)
        atomic_write(args.grid, lambda p: grid.save(p, format="PNG"))
        print(f"grid: {args.grid}")
    return 0


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _line(label: str, s: dict) -> str:
    parts = [
        f"adherence {_pct(s['adherence'])} (colours {_pct(s['colour_match'])}, shape {_pct(s['shape_match'])})"
    ]
    if s.get("n_trigger"):
        parts.append(f"concept {_pct(s['concept'])} of {s['n_trigger']} trigger images")
    if "drift" in s:
        parts.append(f"drift {_pct(s['drift'])} without the trigger")
    return f"{label}: " + ", ".join(parts) + f" [{s['n_plain']} plain images]"


def _grid(sets: dict, per_row: int):
    from PIL import Image

    rows = [ims[i : i + per_row * 4] for ims in sets.values() for i in range(0, len(ims), per_row * 4)]
    w, h = rows[0][0].size
    grid = Image.new("RGB", (w * max(map(len, rows)), h * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            grid.paste(im, (c * w, r * h))
    return grid


def cmd_report(args: argparse.Namespace) -> int:
    run = RunFolder.at(args.run_dir)
    path = run.metrics
    if not path.is_file():
        raise UserError(f"{path} not found; give the run folder of a training run (output/<job.name>)")
    rows = [r for r in run.read_metrics() if "judge" in r]
    if not rows:
        raise UserError(f"{path} has no judge scores: they are written at previews of runs on builtin:shapes")
    print(f"{'step':>6}  {'adherence':>9}  {'concept':>7}  {'drift':>5}")
    for r in rows:
        j = r["judge"]
        print(
            f"{r['step']:>6}  {_pct(j['adherence']):>9}  {_pct(j['concept']):>7}  {_pct(j.get('drift')):>5}"
        )
    return 0
