"""Dataset scan: image files, captions with the trigger word, and one entry per (image, bucket, flip)."""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from zlora.config.schema import DatasetConfig
from zlora.data.buckets import assign_bucket, crop_box
from zlora.data.files import CACHE_FOLDER, IMAGE_EXTS, list_images  # noqa: F401 (their home is files.py)
from zlora.data.masks import find_mask, mask_problem
from zlora.errors import UserError

log = logging.getLogger(__name__)

TRIGGER = "[trigger]"
# Errors PIL raises for files that are not (complete) images.
BAD_IMAGE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Entry:
    """One training sample: an image at one bucket size, maybe mirrored, with its final caption."""

    image: Path
    bucket: tuple[int, int]  # (width, height)
    flip: bool
    caption: str
    dataset: int
    mask: Path | None = None  # the loss mask's file (the image itself for alpha_mask)


def read_caption(image: Path, ext: str, default: str) -> str:
    path = image.with_suffix(f".{ext}")
    if not path.is_file():
        return default
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise UserError(f"{path}: caption is not UTF-8 text; re-save it as UTF-8") from None


def apply_trigger(caption: str, trigger: str | None, add: bool, source: Path | str) -> str:
    """``[trigger]`` becomes the trigger word; a caption without the word gets it prepended when ``add``."""
    if not trigger:
        if TRIGGER in caption:
            raise UserError(
                f"{source}: caption uses {TRIGGER} but no trigger word is set; set job.trigger_word"
            )
        return caption
    caption = caption.replace(TRIGGER, trigger)
    if add and not re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", caption):
        caption = f"{trigger}, {caption}" if caption else trigger
    return caption


def dataset_cache_dir(ds: DatasetConfig) -> Path:
    return (
        Path(ds.cache_dir).expanduser() if ds.cache_dir else Path(ds.folder_path).expanduser() / CACHE_FOLDER
    )


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as displayed (EXIF rotation applied), from the header only."""
    with Image.open(path) as im:
        w, h = im.size
        if im.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
            w, h = h, w
    if w < 1 or h < 1:
        raise ValueError("empty image")
    return w, h


@dataclass
class Scan:
    entries: list[Entry]
    images: int  # image files found
    unreadable: list[str]  # "name (why)" of files that are not images
    too_small: list[str]  # "name (WxH) too small for resolution R"


def scan_dataset(
    ds: DatasetConfig, index: int, job_trigger: str | None, keep: Callable[[Path], bool] | None = None
) -> Scan:
    """Entries of one dataset (one per image, resolution and flip) and the files that gave none; ``keep``
    chooses the images (validation.split)."""
    trigger = ds.trigger_word or job_trigger
    images = [p for p in list_images(ds, index) if keep is None or keep(p)]
    scan = Scan([], len(images), [], [])
    _report_captions(ds, index, images)
    bad_masks: list[str] = []
    for img in images:
        caption = apply_trigger(
            read_caption(img, ds.caption_ext, ds.default_caption),
            trigger,
            ds.add_trigger_word and not ds.is_reg,
            img.with_suffix(f".{ds.caption_ext}"),
        )
        try:
            w, h = image_size(img)
        except BAD_IMAGE as e:
            scan.unreadable.append(f"{img.name} ({why(e)})")
            continue
        mask, problem = find_mask(ds, img, (w, h))
        if problem:
            bad_masks.append(problem)
            continue
        for res in ds.resolution:
            bucket = assign_bucket(w, h, res)
            if bucket is None:
                scan.too_small.append(f"{img.name} ({w}x{h}) too small for resolution {res}")
                continue
            for flip in (False, True) if ds.flip_x else (False,):
                scan.entries.append(Entry(img, bucket, flip, caption, index, mask))
    if bad_masks:
        raise mask_problem(ds, index, bad_masks)
    return scan


def held_out(ds: DatasetConfig, images: list[Path], split: float) -> set[Path]:
    """``validation.split``'s share of a dataset's images: those whose name hashes lowest (the same images in
    every run, whatever else is in the folder), at least one of two or more, never all."""
    if not split or ds.is_reg or len(images) < 2:
        return set()
    n = min(len(images) - 1, max(1, round(split * len(images))))
    folder = Path(ds.folder_path).expanduser()

    def rank(p: Path) -> str:
        return hashlib.sha256(p.relative_to(folder).as_posix().encode()).hexdigest()

    return set(sorted(images, key=rank)[:n])


def _report_captions(ds: DatasetConfig, index: int, images: list[Path]) -> None:
    """One warning when images have no caption file: a caption_ext typo would otherwise train every image on
    default_caption without a word."""
    missing = [img for img in images if not img.with_suffix(f".{ds.caption_ext}").is_file()]
    if not missing:
        return
    default = f"default_caption {ds.default_caption!r}" if ds.default_caption else "an empty caption"
    if len(missing) < len(images):
        log.warning(
            "datasets[%d]: %d of %d images have no .%s caption; they use %s (e.g. %s)",
            index,
            len(missing),
            len(images),
            ds.caption_ext,
            default,
            missing[0].name,
        )
        return
    stems = {img.with_suffix("") for img in images}
    others = Counter(
        p.suffix.lstrip(".")
        for p in images[0].parent.iterdir()
        if p.is_file() and p.with_suffix("") in stems and p.suffix.lower() not in IMAGE_EXTS
    )
    hint = f" — did you mean caption_ext: {others.most_common(1)[0][0]}?" if others else ""
    log.warning(
        "datasets[%d]: 0 of %d images have a .%s caption; %s is used for all%s",
        index,
        len(images),
        ds.caption_ext,
        default,
        hint,
    )


def why(e: Exception) -> str:
    text = str(e).split("\n")[0][:80]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def decode_image(data: bytes) -> Image.Image:
    """Upright RGB from file bytes: EXIF rotation applied, transparency composited on white, CMYK / 16-bit /
    palette converted. Raises one of BAD_IMAGE for files that are not complete images."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            im = Image.new("RGB", rgba.size, (255, 255, 255))
            im.paste(rgba, mask=rgba.getchannel("A"))
        elif im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: scale to 8 bits, not clip
            arr = np.asarray(im, dtype=np.float32)
            im = Image.fromarray(
                (arr / (65535.0 if arr.max() > 255 else 255.0) * 255).round().astype(np.uint8)
            )
        return im.convert("RGB")


def to_pixels(im: Image.Image, bucket: tuple[int, int], flip: bool) -> torch.Tensor:
    """Minimal centre crop to the bucket's ratio and resize: (3, H, W) in [-1, 1]."""
    box = crop_box(im.width, im.height, bucket)
    im = im.resize(bucket, Image.Resampling.LANCZOS, box=box)
    if flip:
        im = ImageOps.mirror(im)
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (3, H, W)


def load_image(path: Path, bucket: tuple[int, int], flip: bool = False) -> torch.Tensor:
    return to_pixels(decode_image(path.read_bytes()), bucket, flip)
