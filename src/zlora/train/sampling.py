"""Preview samples during training: a grid (rows = prompts, columns = seeds) plus the single images."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

from zlora.config.schema import PromptConfig, SampleConfig
from zlora.utils.io import atomic_write

LABEL_H = 14
# Images per pipeline call: up to 32, and at most one megapixel in all, so 1024² previews stay one at a time (no
# more memory than before on a small card) while small ones share a call.
PREVIEW_PIXELS, PREVIEW_MAX = 1024 * 1024, 32


@torch.no_grad()
def render_previews(
    pipe,
    prompts: list[PromptConfig],
    embeds: list[torch.Tensor],
    neg_embeds: list[torch.Tensor],
    cfg: SampleConfig,
    out_dir: Path | None,
    tag: str,
) -> tuple[Path, list[tuple[str, int, Image.Image]]]:
    """Render every prompt x seed with ``pipe`` (its transformer as it is now) and write ``<tag>.png``. Each
    prompt has its own size, seed and negative prompt (``SampleConfig.prompt_list``). Returns the grid's path and
    the (prompt, seed, image) of every cell."""
    device = pipe.transformer.device
    use_cfg = cfg.guidance_scale > 0
    # Images of one size go through the pipeline together, each with the generator of its own seed, so an image
    # is what it would be alone; one call per image made small models' previews cost 10x their compute.
    jobs: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, p in enumerate(prompts):
        for j in range(cfg.samples_per_prompt):
            jobs.setdefault((p.height, p.width), []).append((i, j))
    images: dict[tuple[int, int], Image.Image] = {}
    for (height, width), items in jobs.items():
        batch = max(1, min(PREVIEW_MAX, PREVIEW_PIXELS // (height * width)))
        for k in range(0, len(items), batch):
            part = items[k : k + batch]
            out = pipe(
                prompt_embeds=[embeds[i] for i, _ in part],
                negative_prompt_embeds=[neg_embeds[i] for i, _ in part] if use_cfg else None,
                height=height,
                width=width,
                num_inference_steps=cfg.sample_steps,
                guidance_scale=cfg.guidance_scale if use_cfg else 0.0,
                generator=[torch.Generator(device).manual_seed(prompts[i].seed + j) for i, j in part],
            ).images
            images.update(zip(part, out, strict=True))
    rows, cells = [], []
    for i, p in enumerate(prompts):
        row = []
        for j in range(cfg.samples_per_prompt):
            seed, image = p.seed + j, images[(i, j)]
            if out_dir is not None:
                atomic_write(
                    out_dir / f"{tag}_p{i}_s{seed}.png", lambda f, im=image: im.save(f, format="PNG")
                )
            row.append(image)
            cells.append((p.prompt, seed, image))
        rows.append(row)
    if out_dir is None:  # only the images (e.g. the base model's, for the judge)
        return None, cells
    return _write_grid(rows, [p.prompt for p in prompts], out_dir / f"{tag}.png"), cells


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
