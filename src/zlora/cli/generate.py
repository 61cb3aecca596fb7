"""``zlora generate``: an image from a base model and weighted LoRAs (diffusers' own pipeline and LoRA loader)."""

from __future__ import annotations

import argparse

from zlora import __version__
from zlora.cli.common import WRITES, add, parse_lora_arg


def register(sub) -> None:
    p = add(sub, "generate", "generate an image with a base model and LoRAs", cmd_generate, [WRITES])
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
    p.add_argument(
        "--blocks-to-swap",
        type=int,
        default=0,
        metavar="N",
        help="layer offloading: the last N main blocks stay in host memory and come to the GPU ahead of use "
        "(model.blocks_to_swap; the same image, less GPU memory)",
    )
    p.add_argument("-o", "--output", "--out", default="out.png", help="image file (.png, .jpg, .webp)")


def cmd_generate(args: argparse.Namespace) -> int:
    from zlora.config.presets import fill_sampling
    from zlora.generate import generate_image, image_format, save_image
    from zlora.utils.io import atomic_write, check_output

    vars(args).update(fill_sampling(args.model, vars(args)))
    loras = [parse_lora_arg(x) for x in args.lora]
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
        blocks_to_swap=args.blocks_to_swap,
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
