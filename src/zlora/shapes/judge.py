"""A pixel-level judge for the shapes world: which colour the background and the shape are, and which shape it is.

Colours: every pixel goes to the nearest colour of the palette (or to none when far from all of them). The
background is the commonest colour of the image's border (two-tone: of each half's border). The shape's colour is
the commonest other colour inside; its pixels form the mask (isolated specks dropped). Shape: each shape's template
is the radial signature of the mask's outline (``signature``), and the nearest template wins: every shape drawn as
the world draws it, at several sizes, sharp and blurred (a VAE's decoder rounds thin tips and corners).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from zlora.shapes.world import ALL_SHAPES, COLOURS, Expect, draw_shape

_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], dtype=np.float32)
MAX_DIST = 90.0  # RGB distance beyond which a pixel is no palette colour
MIN_SHAPE = 0.03  # the shape must cover at least this fraction of the image
# Beyond this signature distance from every template an outline is no shape at all (a blob). Calibrated on
# 200 scenes: the world's own renders reach 0.064, their VAE reconstructions 0.083; by eye, generated outlines up
# to about 0.2 are still the shape they are named, farther ones mostly blobs.
MAX_SHAPE_DISTANCE = 0.2


@dataclass(frozen=True)
class Verdict:
    fg: str | None
    shape: str | None
    bg: str | None
    bg2: str | None = None
    shape_distance: float = 0.0  # signature distance to the nearest template of the winning shape
    # The shape whose template is nearest, also past MAX_SHAPE_DISTANCE (where ``shape`` is None): what drift
    # compares, so an outline at 0.19 and its near-twin at 0.21 do not count as a change.
    nearest: str | None = None

    def matches(self, want: Expect) -> dict[str, bool]:
        bgs = {want.bg, want.bg2} - {None}
        got_bgs = {self.bg, self.bg2} - {None}
        colours = self.fg == want.fg and (got_bgs == bgs if want.bg2 else self.bg == want.bg)
        return {"colours": colours, "shape": self.shape == want.shape}

    def as_dict(self) -> dict:
        return asdict(self)


def classify(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) palette index, -1 where no colour is near."""
    d = np.linalg.norm(pixels[..., None, :].astype(np.float32) - _PALETTE, axis=-1)
    idx = d.argmin(-1)
    idx[d.min(-1) > MAX_DIST] = -1
    return idx


def _mode(labels: np.ndarray, exclude=()) -> tuple[int, int]:
    labels = labels[(labels >= 0) & ~np.isin(labels, list(exclude))]
    if labels.size == 0:
        return -1, 0
    counts = np.bincount(labels, minlength=len(_NAMES))
    return int(counts.argmax()), int(counts.max())


BINS = 36
HARMONICS = range(1, 7)


def signature(mask: np.ndarray) -> np.ndarray:
    """The outline as seen from the mask's centroid: the farthest set pixel per angle (36 bins, empty bins
    interpolated), divided by its mean, as Fourier coefficients 1-6 (complex: shapes are drawn upright, so the
    phase tells a square from a diamond). A blurred outline keeps its dominant harmonic, only weaker."""
    ys, xs = np.nonzero(mask)
    dy, dx = ys - ys.mean(), xs - xs.mean()
    ang = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * BINS).astype(int) % BINS
    dist = np.hypot(dx, dy) + 0.5
    r = np.full(BINS, np.nan)
    np.fmax.at(r, ang, dist)
    ok = ~np.isnan(r)
    if ok.sum() < 3:
        return np.zeros(len(HARMONICS), dtype=complex)
    idx = np.arange(BINS)
    r = np.interp(idx, idx[ok], r[ok], period=BINS)
    f = np.fft.rfft(r / r.mean()) / BINS
    return f[list(HARMONICS)]


@cache
def templates() -> dict[str, list[np.ndarray]]:
    """Signatures of every shape drawn as the world draws it, at three sizes, sharp and blurred."""
    out: dict[str, list[np.ndarray]] = {s: [] for s in ALL_SHAPES}
    for shape in ALL_SHAPES:
        for side in (20, 30, 44):
            im = Image.new("L", (256, 256), 0)
            draw_shape(ImageDraw.Draw(im), shape, 32, 32, side * 4, 255)
            im = im.resize((64, 64), Image.Resampling.BOX)
            for blur in (0.0, 1.0, 2.0):
                b = im.filter(ImageFilter.GaussianBlur(blur)) if blur else im
                out[shape].append(signature(np.asarray(b) > 127))
    return out


def _despeckle(mask: np.ndarray) -> np.ndarray:
    """Drop pixels with fewer than 3 set pixels in their 3x3 neighbourhood (themselves included)."""
    p = np.pad(mask.astype(np.int16), 1)
    h, w = mask.shape
    count = sum(p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    return mask & (count >= 3)


def judge(image: Image.Image, two_tone: bool = False) -> Verdict:
    px = np.asarray(image.convert("RGB"))
    labels = classify(px)
    h, w = labels.shape
    b = max(1, h // 32)
    border = np.ones_like(labels, dtype=bool)
    border[b:-b, b:-b] = False
    bg2 = None
    if two_tone:  # two halves: the split that gives two different border colours, each the mode of its half
        best = None
        for halves in ((np.s_[:, : w // 2], np.s_[:, w // 2 :]), (np.s_[: h // 2, :], np.s_[h // 2 :, :])):
            (c1, n1), (c2, n2) = (_mode(labels[s][border[s]]) for s in halves)
            if c1 != c2 and (best is None or n1 + n2 > best[0]):
                best = (n1 + n2, c1, c2)
        bg, bg2 = (best[1], best[2]) if best else (_mode(labels[border])[0], -1)
    else:
        bg, _ = _mode(labels[border])
    exclude = {c for c in (bg, bg2) if c is not None and c >= 0}
    fg, count = _mode(labels[~border], exclude)
    name = lambda i: _NAMES[i] if i is not None and i >= 0 else None  # noqa: E731
    if fg < 0 or count < MIN_SHAPE * h * w:
        return Verdict(None, None, name(bg), name(bg2))
    mask = _despeckle(labels == fg)
    if not mask.any():
        return Verdict(name(fg), None, name(bg), name(bg2))
    sig = signature(mask)
    dists = {s: min(float(np.abs(sig - t).sum()) for t in ts) for s, ts in templates().items()}
    shape = min(dists, key=dists.get)
    return Verdict(
        name(fg),
        shape if dists[shape] <= MAX_SHAPE_DISTANCE else None,
        name(bg),
        name(bg2),
        round(dists[shape], 4),
        shape,
    )
