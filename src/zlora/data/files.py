"""A dataset's files, torch-free (the web UI and the pre-flight check read them without loading torch): which
files are images, where the caches live, and the listing the trainer trains on."""

from __future__ import annotations

import logging
from pathlib import Path

from zlora.config.schema import DatasetConfig
from zlora.errors import UserError
from zlora.runfolder import is_run_folder

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
CACHE_FOLDER = "_zlora_cache"


def list_images(ds: DatasetConfig, index: int = 0) -> list[Path]:
    """Image files of a dataset (sorted; subfolders when switched on, never the cache folder or a run folder's
    previews). Links that point at nothing are named, not skipped in silence."""
    folder = Path(ds.folder_path).expanduser()
    if not folder.is_dir():
        raise UserError(f"`datasets[{index}].folder_path` does not exist: {folder.resolve()}")
    found = [p for p in (folder.rglob("*") if ds.include_subfolders else folder.iterdir())]
    runs = {p for p in found if p.is_dir() and is_run_folder(p)}  # a run's samples/ are not training images

    def skipped(p: Path) -> bool:
        return CACHE_FOLDER in p.relative_to(folder).parts or any(r in p.parents for r in runs)

    candidates = [p for p in found if p.suffix.lower() in IMAGE_EXTS and not skipped(p)]
    dangling = sorted(p.name for p in candidates if p.is_symlink() and not p.exists())
    if dangling:
        log.warning(
            "datasets[%d]: %d image link(s) point at nothing and are skipped: %s",
            index,
            len(dangling),
            ", ".join(dangling[:10]) + (" ..." if len(dangling) > 10 else ""),
        )
    images = sorted(p for p in candidates if p.is_file())
    if not images:
        hint = "" if ds.include_subfolders else " (set include_subfolders: true to look inside subfolders)"
        raise UserError(
            f"`datasets[{index}].folder_path` has no images ({', '.join(sorted(IMAGE_EXTS))}): "
            f"{folder.resolve()}{hint}"
        )
    return images
