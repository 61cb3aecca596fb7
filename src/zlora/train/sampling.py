"""Preview samples during training: a grid (rows = prompts, columns = seeds) plus the single images."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

from zlora.config.schema import PromptConfig, SampleConfig
from zlora.utils.io import atomic_write

LABEL_H = 14


@torch.no_grad()
def render_previews(
    pipe, prompts: list[PromptConfig], embeds: list[torch.Tensor], neg_embeds: list[torch.Tensor],
    cfg: SampleConfig, out_dir: Path, tag: str,
) -> Path:  # fmt: skip
    """Render every prompt x seed with ``pipe`` (its transformer as it is now) and write ``<tag>.png``. Each
    prompt has its own size, seed and negative prompt (``SampleConfig.prompt_list``)."""
    device = pipe.transformer.device
    use_cfg = cfg.guidance_scale > 0
    rows = []
    for i, (p, embed, neg) in enumerate(zip(prompts, embeds, neg_embeds, strict=True)):
        row = []
        for j in range(cfg.samples_per_prompt):
            seed = p.seed + j
            image = pipe(
                prompt_embeds=[embed],
                negative_prompt_embeds=[neg] if use_cfg else None,
                height=p.height, width=p.width, num_inference_steps=cfg.sample_steps,
                guidance_scale=cfg.guidance_scale if use_cfg else 0.0,
                generator=torch.Generator(device).manual_seed(seed),
            ).images[0]  # fmt: skip
            atomic_write(out_dir / f"{tag}_p{i}_s{seed}.png", lambda f, im=image: im.save(f, format="PNG"))
            row.append(image)
        rows.append(row)
    return _write_grid(rows, [p.prompt for p in prompts], out_dir / f"{tag}.png")


def _write_grid(rows: list[list[Image.Image]], prompts: list[str], path: Path) -> Path:
    """Cells as large as the largest image (prompts may have different sizes); each row labelled by its prompt."""
    w = max(im.width for row in rows for im in row)
    h = max(im.height for row in rows for im in row)
    grid = Image.new("RGB", (w * len(rows[0]), (h + LABEL_H) * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(rows):
        y = r * (h + LABEL_H)
        draw.text((2, y + 1), prompts[r][: max(8, w * len(row) // 6)], fill="black")
        for c, im in enumerate(row):
            grid.paste(im, (c * w, y + LABEL_H))
    atomic_write(path, lambda p: grid.save(p, format="PNG"))
    return path
