"""Loss masks (ai-toolkit's ``mask_path`` / ``alpha_mask`` / ``mask_min_value``): which file masks an image, and
the mask on the latent grid. A mask goes through its image's crop, resize and flip, then each latent pixel gets
the mean of the mask over the image pixels it covers (ai-toolkit resizes the mask to the latent size with
nearest-neighbour; the area mean keeps a thin white stroke instead of dropping or keeping it whole).

Masks are cheap to compute but need their file decoded (for ``alpha_mask`` the whole image), so with
``cache_latents`` they are cached beside the latents, keyed by the mask file's bytes, the bucket, the flip and the
latent grid; ``mask_min_value`` and ``invert_mask`` are applied when the loss is computed, so changing them needs
no new cache entry."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from zlora.config.schema import DatasetConfig
from zlora.data.buckets import crop_box
from zlora.data.cache import DiskCache, key
from zlora.data.files import IMAGE_EXTS
from zlora.errors import UserError

MASK_FORMAT = "zlora-mask-1"
RATIO_TOLERANCE = 0.01  # a mask may be smaller or larger than its image, not of another shape


def has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info


def mask_file(ds: DatasetConfig, image: Path) -> Path | None:
    """The mask of ``image`` in ``ds.mask_path``: the same name (with any image extension), at the same place
    below the folder as the image below ``folder_path`` (subfolders), else directly in the folder."""
    folder = Path(ds.mask_path).expanduser()
    try:
        rel = image.relative_to(Path(ds.folder_path).expanduser()).with_suffix("")
    except ValueError:
        rel = Path(image.stem)
    for stem in dict.fromkeys((rel, Path(image.stem))):
        for ext in sorted(IMAGE_EXTS):
            for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def find_mask(ds: DatasetConfig, image: Path, size: tuple[int, int]) -> tuple[Path | None, str | None]:
    """(the mask source of ``image``, or None without masks; the problem with it, named, or None)."""
    if ds.alpha_mask:
        with Image.open(image) as im:
            return image, None if has_alpha(im) else f"{image.name} has no alpha channel"
    if not ds.mask_path:
        return None, None
    mask = mask_file(ds, image)
    if mask is None:
        return None, f"{image.name} has no mask"
    try:
        with Image.open(mask) as im:
            mw, mh = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):
                mw, mh = mh, mw
    except (OSError, ValueError, SyntaxError) as e:
        return None, f"{mask.name} is not an image ({type(e).__name__})"
    w, h = size
    if abs(mw / mh - w / h) > RATIO_TOLERANCE * (w / h):
        return None, f"{mask.name} is {mw}x{mh} but {image.name} is {w}x{h}"
    return mask, None


def mask_problem(ds: DatasetConfig, index: int, problems: list[str]) -> UserError:
    field = f"datasets[{index}].{'alpha_mask' if ds.alpha_mask else 'mask_path'}"
    shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
    fix = (
        "give every image an alpha channel or set alpha_mask: false"
        if ds.alpha_mask
        else f"put a same-named mask of the image's aspect ratio for each image into {ds.mask_path}"
    )
    return UserError(f"{field}: {shown}; {fix}")


def mask_grid(
    data: bytes, alpha: bool, bucket: tuple[int, int], flip: bool, factor: int, name: str
) -> torch.Tensor:
    """The mask in [0, 1] on the latent grid of ``bucket`` (VAE factor ``factor``): (1, h, w), float32."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            m = (im.convert("RGBA").getchannel("A") if alpha else im.convert("L")).convert("F")
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{name}: cannot read the mask ({type(e).__name__}); re-save it as PNG") from None
    grid = (bucket[0] // factor, bucket[1] // factor)
    m = m.resize(grid, Image.Resampling.BOX, box=crop_box(m.width, m.height, bucket))
    if flip:
        m = ImageOps.mirror(m)
    return torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0)[
        None
    ].contiguous()  # F: no 8-bit rounding


class Masks:
    """The masks of a ``TrainData``'s entries, in memory (a 64 x 64 latent grid is 16 KiB), read from or written
    to the latent cache when the dataset has one."""

    def __init__(self, datasets: list[DatasetConfig], caches: dict[int, DiskCache]):
        self.datasets, self.caches = datasets, caches
        self.grids: dict[str, torch.Tensor] = {}
        self.keys: dict[tuple, str] = {}
        self._sha: dict[Path, str] = {}

    def _key(self, e, factor: int, image_sha: dict[Path, str]) -> str:
        if e.mask not in self._sha:
            self._sha[e.mask] = image_sha.get(e.mask) or hashlib.sha256(e.mask.read_bytes()).hexdigest()
        alpha = self.datasets[e.dataset].alpha_mask
        return key(MASK_FORMAT, self._sha[e.mask], alpha, e.bucket, e.flip, factor)

    def prepare(self, entries: list, factor: int, image_sha: dict[Path, str]) -> None:
        for e in entries:
            if e.mask is None:
                continue
            k = self.keys[(e.mask, e.bucket, e.flip)] = self._key(e, factor, image_sha)
            if k in self.grids:
                continue
            cache = self.caches.get(e.dataset)
            grid = cache.get(k) if cache else None
            if grid is None:
                alpha = self.datasets[e.dataset].alpha_mask
                grid = mask_grid(e.mask.read_bytes(), alpha, e.bucket, e.flip, factor, str(e.mask))
                if cache:
                    cache.put(k, grid)
            self.grids[k] = grid

    def weight(self, e, device: torch.device) -> torch.Tensor | None:
        """The loss weight of entry ``e`` per latent pixel, (1, h, w) in [mask_min_value, 1], or None."""
        if e.mask is None:
            return None
        ds = self.datasets[e.dataset]
        m = self.grids[self.keys[(e.mask, e.bucket, e.flip)]]
        if ds.invert_mask:
            m = 1 - m
        return (ds.mask_min_value + (1 - ds.mask_min_value) * m).to(device, non_blocking=True)
