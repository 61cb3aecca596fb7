"""Regenerate the bundled demo dataset ``examples/shapes/``: small drawings of coloured shapes with captions.

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


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for i, (shape, fg_name, fg, bg_name, bg) in enumerate(ITEMS):
        stem = OUT / f"{i:02d}_{fg_name}_{shape}"
        draw(shape, fg, bg).save(stem.with_suffix(".png"), optimize=True)
        stem.with_suffix(".txt").write_text(f"a {fg_name} {shape} on a {bg_name} background\n")


if __name__ == "__main__":
    main()
