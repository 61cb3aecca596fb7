"""Regenerate the bundled demo datasets: ``examples/shapes/`` (small drawings of coloured shapes with captions,
used by the tests), ``examples/stars/`` (the quickstart's lesson: the star, a shape builtin:shapes never saw,
captioned ``a red [trigger] on a blue background`` so the trigger word comes to mean it) and ``examples/world/``
(the quickstart's regularisation set: scenes of builtin:shapes' own world, circles to diamonds).

Run from the repository root: ``python examples/make_shapes.py``. Deterministic; the output is committed.
"""

from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).parent / "shapes"
SIZE = 128
ITEMS = [
    ("circle", "red", (220, 40, 40), "blue", (40, 60, 200)),
    ("square", "yellow", (240, 210, 30), "purple", (110, 40, 150)),
    ("triangle", "green", (40, 180, 70), "white", (245, 245, 245)),
    ("circle", "white", (245, 245, 245), "black", (15, 15, 15)),
    ("square", "orange", (250, 140, 20), "teal", (20, 140, 140)),
    ("triangle", "blue", (40, 60, 200), "yellow", (240, 210, 30)),
    ("circle", "purple", (110, 40, 150), "green", (40, 180, 70)),
    ("square", "black", (15, 15, 15), "pink", (240, 150, 190)),
]


def draw(shape: str, fg: tuple, bg: tuple) -> Image.Image:
    im = Image.new("RGB", (SIZE, SIZE), bg)
    d = ImageDraw.Draw(im)
    m = SIZE // 5
    if shape == "circle":
        d.ellipse((m, m, SIZE - m, SIZE - m), fill=fg)
    elif shape == "square":
        d.rectangle((m, m, SIZE - m, SIZE - m), fill=fg)
    else:
        d.polygon([(SIZE // 2, m), (SIZE - m, SIZE - m), (m, SIZE - m)], fill=fg)
    return im


def make_stars(n: int = 16, seed: int = 7) -> None:
    """The stars, and in ``star_masks/`` a loss mask of each (white on the star, black elsewhere: the
    masked-dataset row of benchmarks/RESULTS.md, ``datasets[0].mask_path``)."""
    import dataclasses
    import random

    from zlora.shapes.world import CONCEPT, STAR_SIZES, STAR_SPREAD, random_scene, render

    out, masks = Path(__file__).parent / "stars", Path(__file__).parent / "star_masks"
    out.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(n):
        scene = random_scene(rng, shapes=(CONCEPT,), two_tone=0.2, sizes=STAR_SIZES, spread=STAR_SPREAD)
        stem = out / f"{i:02d}_{scene.fg}_star"
        render(scene).save(stem.with_suffix(".png"), optimize=True)
        stem.with_suffix(".txt").write_text(scene.caption("[trigger]") + "\n")
        shape_only = render(dataclasses.replace(scene, fg="white", bg="black", bg2=None)).convert("L")
        shape_only.point(lambda v: 255 if v > 128 else 0).save(masks / f"{stem.name}.png", optimize=True)


def make_world(n: int = 32, seed: int = 11) -> None:
    """The base model's own world, the four shapes in turn, where and as big as it learnt them."""
    import random

    from zlora.shapes.world import SHAPES, SIZES, SPREAD, random_scene, render

    out = Path(__file__).parent / "world"
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(n):
        scene = random_scene(rng, shapes=(SHAPES[i % len(SHAPES)],), two_tone=0.2, sizes=SIZES, spread=SPREAD)
        stem = out / f"{i:02d}_{scene.fg}_{scene.shape}"
        render(scene).save(stem.with_suffix(".png"), optimize=True)
        stem.with_suffix(".txt").write_text(scene.caption() + "\n")


def main() -> None:
    make_stars()
    make_world()
    OUT.mkdir(parents=True, exist_ok=True)
    for i, (shape, fg_name, fg, bg_name, bg) in enumerate(ITEMS):
        stem = OUT / f"{i:02d}_{fg_name}_{shape}"
        draw(shape, fg, bg).save(stem.with_suffix(".png"), optimize=True)
        stem.with_suffix(".txt").write_text(f"a {fg_name} {shape} on a {bg_name} background\n")


if __name__ == "__main__":
    main()
