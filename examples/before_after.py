"""The README's before/after picture of the quickstart: the first and the last preview grid of a run side by side.

python examples/before_after.py output/quickstart docs/quickstart-before-after.png
"""

import sys
from pathlib import Path

from PIL import Image, ImageDraw


def main(run_dir: str, out: str, scale: int = 2) -> None:
    grids = sorted((Path(run_dir) / "samples").glob("step-??????.png"))
    if len(grids) < 2:
        sys.exit(f"{run_dir}: needs at least two preview grids (samples/step-*.png)")
    first, last = (Image.open(p).convert("RGB") for p in (grids[0], grids[-1]))
    gap, head = 16, 18
    canvas = Image.new(
        "RGB", (first.width + gap + last.width, head + max(first.height, last.height)), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for x, im, path in ((0, first, grids[0]), (first.width + gap, last, grids[-1])):
        canvas.paste(im, (x, head))
        draw.text((x + 2, 3), f"step {int(path.stem.split('-')[1])}", fill="black")
    canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.Resampling.NEAREST)
    canvas.save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
