"""Dataset scan, captions, image loading and the (resumable) order in which samples are drawn."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from zlora.config.schema import DatasetConfig
from zlora.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


@dataclass(frozen=True)
class Sample:
    image: Path
    caption: str
    resolution: int


def read_caption(image: Path, ext: str, default: str) -> str:
    path = image.with_suffix(f".{ext}")
    if not path.is_file():
        return default
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise UserError(f"{path}: caption is not UTF-8 text; re-save it as UTF-8") from None


def scan_dataset(ds: DatasetConfig, index: int = 0) -> list[Sample]:
    """One sample per (image, resolution) in ``ds.folder_path`` (top level), sorted by file name."""
    folder = Path(ds.folder_path).expanduser()
    if not folder.is_dir():
        raise UserError(f"`datasets[{index}].folder_path` does not exist: {folder.resolve()}")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not images:
        raise UserError(
            f"`datasets[{index}].folder_path` has no images ({', '.join(sorted(IMAGE_EXTS))}): {folder.resolve()}"
        )
    return [
        Sample(img, read_caption(img, ds.caption_ext, ds.default_caption), res)
        for img in images
        for res in ds.resolution
    ]


def load_image(path: Path, size: int) -> torch.Tensor:
    """Upright RGB, centre-cropped to a square and resized: (3, size, size) in [-1, 1]."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            im = Image.new("RGB", rgba.size, (255, 255, 255))
            im.paste(rgba, mask=rgba.getchannel("A"))  # transparency composited on white
        im = ImageOps.fit(im.convert("RGB"), (size, size), Image.Resampling.LANCZOS)
        arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (3, H, W)


def load_samples(samples: list[Sample]) -> tuple[list[Sample], list[torch.Tensor]]:
    """Load every sample's pixels; unreadable files are skipped with one summary line."""
    kept, pixels, bad = [], [], []
    for s in samples:
        try:
            pixels.append(load_image(s.image, s.resolution))
            kept.append(s)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            bad.append(f"{s.image.name} ({type(e).__name__})")
    if bad:
        if not kept:
            raise UserError(f"no usable image: all {len(samples)} failed to load: {', '.join(bad[:5])}")
        log.warning("%d of %d images skipped: %s", len(bad), len(samples), ", ".join(bad[:10]))
    return kept, pixels


class BatchOrder:
    """Draws batches from a shuffled order that is a pure function of (seed, epoch); its position is saved in
    checkpoints so a resumed run sees exactly the batches an uninterrupted one would."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self.epoch, self.cursor = 0, 0
        self._perm_cache: tuple[int, list[int]] | None = None

    def _perm(self) -> list[int]:
        if self._perm_cache is None or self._perm_cache[0] != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            self._perm_cache = (self.epoch, torch.randperm(self.n, generator=g).tolist())
        return self._perm_cache[1]

    def next_batch(self, batch_size: int) -> list[int]:
        out: list[int] = []
        while len(out) < batch_size:
            if self.cursor >= self.n:
                self.epoch, self.cursor = self.epoch + 1, 0
            take = self._perm()[self.cursor : self.cursor + batch_size - len(out)]
            out += take
            self.cursor += len(take)
        return out

    def state_dict(self) -> dict:
        return {"n": self.n, "seed": self.seed, "epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise UserError(
                f"the checkpoint was trained on {state['n']} samples, the dataset now has {self.n}; "
                "restore the dataset or start a new run (change job.name)"
            )
        self.epoch, self.cursor = state["epoch"], state["cursor"]
