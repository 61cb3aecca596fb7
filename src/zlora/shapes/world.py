"""The procedural world ``builtin:shapes`` was pretrained on: one flat-coloured shape on a plain or two-tone
background, captioned ``a red circle on a blue background`` / ``a red circle on a blue and white background``.

The star is not part of this world: it is the concept the quickstart LoRA teaches (trigger ``zlr``), so the base
model has never seen it. Everything here is deterministic from a seed.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from PIL import Image, ImageDraw

SIZE = 64
# Where builtin:shapes' transformer saw its shapes: centred within SPREAD, of a size in SIZES. The VAE saw the whole
# range.
SIZES, SPREAD = (0.5, 0.75), 0.12
# The quickstart's stars are bigger and more centred: five points need room at 64 px (8x8 tokens). At the world's
# sizes the quickstart LoRA drew a star for 36% of trigger prompts, at these 98% (benchmarks/RESULTS.md).
STAR_SIZES, STAR_SPREAD = (0.75, 0.9), 0.06
# How builtin:shapes is sampled unless told otherwise (zlora generate, zlora shapes eval, the quickstart).
# Guidance 1 (Z-Image's pipeline adds guidance x (cond - uncond) to cond: a classic CFG scale of 2); measured on the
# base model, 64 prompts x 2 seeds: shape 82% at 0, 85% at 1, 75% at 2, 55% at 4 (stronger CFG makes every side
# concave).
SAMPLING = {"steps": 20, "guidance": 1.0, "width": 64, "height": 64}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (250, 140, 20),
    "yellow": (240, 215, 30),
    "green": (40, 170, 60),
    "teal": (20, 150, 150),
    "blue": (40, 60, 210),
    "purple": (120, 40, 160),
    "pink": (245, 140, 200),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "diamond")  # what the base model knows
CONCEPT = "star"  # what it does not: the quickstart LoRA's concept
TRIGGER = "zlr"
ALL_SHAPES = (*SHAPES, CONCEPT)
_PROMPT = re.compile(
    r"\ban? (?P<fg>\w+) (?P<shape>\w+) on an? (?P<bg>\w+)(?: and (?P<bg2>\w+))? background\b"
)


@dataclass(frozen=True)
class Scene:
    shape: str
    fg: str
    bg: str
    bg2: str | None = None  # two-tone background: bg on the first half, bg2 on the second
    vertical: bool = False  # two-tone split: left/right (True) or top/bottom (False)
    cx: float = 0.5  # centre and size of the shape's square box, as fractions of the image
    cy: float = 0.5
    size: float = 0.6

    def caption(self, shape_word: str | None = None) -> str:
        bg = f"{self.bg} and {self.bg2}" if self.bg2 else self.bg
        article = "an" if self.fg[0] in "aeiou" else "a"
        return f"{article} {self.fg} {shape_word or self.shape} on a {bg} background"


def shape_polygon(shape: str, x0: float, y0: float, side: float) -> list[tuple[float, float]] | None:
    """Corner points of ``shape`` in the square box at (x0, y0) with ``side``; None for the circle."""
    x1, y1, cx, cy = x0 + side, y0 + side, x0 + side / 2, y0 + side / 2
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "star":  # five points, one up; inner radius 0.45 of the outer
        r = side / 2
        return [
            (
                cx + (r if k % 2 == 0 else 0.45 * r) * math.sin(k * math.pi / 5),
                cy - (r if k % 2 == 0 else 0.45 * r) * math.cos(k * math.pi / 5),
            )
            for k in range(10)
        ]
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}")


def draw_shape(d: ImageDraw.ImageDraw, shape: str, x0: float, y0: float, side: float, fill) -> None:
    pts = shape_polygon(shape, x0, y0, side)
    if pts is None:
        d.ellipse((x0, y0, x0 + side, y0 + side), fill=fill)
    else:
        d.polygon(pts, fill=fill)


def render(scene: Scene, size: int = SIZE) -> Image.Image:
    """The scene as an RGB image, drawn at 4x and downsampled (anti-aliased edges, as a camera would see them)."""
    big = size * 4
    im = Image.new("RGB", (big, big), COLOURS[scene.bg])
    d = ImageDraw.Draw(im)
    if scene.bg2:
        half = (big // 2, 0, big, big) if scene.vertical else (0, big // 2, big, big)
        d.rectangle(half, fill=COLOURS[scene.bg2])
    side = scene.size * big
    draw_shape(d, scene.shape, scene.cx * big - side / 2, scene.cy * big - side / 2, side, COLOURS[scene.fg])
    return im.resize((size, size), Image.Resampling.BOX)


def random_scene(
    rng: random.Random, shapes=SHAPES, two_tone: float = 0.25, sizes=(0.4, 0.75), spread: float | None = None
) -> Scene:
    """A random scene: shape and three distinct colours; the size drawn from ``sizes``; the centre anywhere the
    shape fits, or within ``spread`` of the image centre."""
    shape = rng.choice(shapes)
    fg, bg, bg2 = rng.sample(list(COLOURS), 3)
    size = rng.uniform(*sizes)
    lo, hi = size / 2 + 0.03, 1 - size / 2 - 0.03
    if spread is not None:
        lo, hi = max(lo, 0.5 - spread), min(hi, 0.5 + spread)
    cx, cy = (rng.uniform(lo, hi) for _ in range(2))
    tone = rng.random() < two_tone
    return Scene(shape, fg, bg, bg2 if tone else None, rng.random() < 0.5, cx, cy, size)


@dataclass(frozen=True)
class Expect:
    """What a prompt asks for: the shape's colour, the shape, the background colour(s)."""

    fg: str
    shape: str
    bg: str
    bg2: str | None = None


def parse_prompt(prompt: str, trigger: str | None = TRIGGER) -> Expect | None:
    """``a red circle on a blue background`` -> Expect; the trigger word in the shape's place means the concept.
    None when the prompt is not one of this world's."""
    m = _PROMPT.search(prompt.lower())
    if not m:
        return None
    shape = m["shape"]
    if trigger and shape == trigger.lower():
        shape = CONCEPT
    if m["fg"] not in COLOURS or shape not in ALL_SHAPES or m["bg"] not in COLOURS:
        return None
    if m["bg2"] and m["bg2"] not in COLOURS:
        return None
    return Expect(m["fg"], shape, m["bg"], m["bg2"])


def eval_prompts(n: int = 64, seed: int = 1234, shape_word: str | None = None) -> list[str]:
    """``n`` plain-background prompts of this world, every (shape, colour) pair covered evenly; with
    ``shape_word`` (e.g. the trigger) in the shape's place."""
    rng = random.Random(seed)
    out, seen = [], set()
    for i in range(n):
        shape = SHAPES[i % len(SHAPES)]
        fg = list(COLOURS)[i % len(COLOURS)]
        # no prompt twice (while the background colours last): a repeat would count one image's verdict twice
        free = [c for c in COLOURS if c != fg and (shape, fg, c) not in seen]
        bg = rng.choice(free or [c for c in COLOURS if c != fg])
        seen.add((shape, fg, bg))
        out.append(Scene(shape, fg, bg).caption(shape_word))
    return out
