"""On-disk caches of VAE latents and text embeddings: one safetensors file per entry, named by a hash of
everything the result depends on, written atomically (temporary name + rename). A killed run leaves at most
stray temporary files, which are removed; an unreadable entry is re-encoded, never trusted."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from zlora.errors import UserError
from zlora.utils.tensorfile import save_tensors

log = logging.getLogger(__name__)

# Bumped when the way latents or embeddings are computed changes, so old entries are not reused.
LATENT_FORMAT = "zlora-latent-1"
TEXT_FORMAT = "zlora-text-1"
_SAMPLED_BYTES = 1 << 20


def fingerprint(*folders: Path) -> str:
    """Identity of model components (e.g. vae/, or text_encoder/ + tokenizer/) inside one model folder.
    A file listed in the folder's manifest (``zlora models pull/export``) counts by its sha256. Other files
    count by name and size, small ones in full, large ones by their first and last MiB: hashing the whole
    8 GB text encoder at every start would cost seconds, and any retrained weight file differs within its
    first MiB of tensor data."""
    from zlora.hub.manifest import read_manifest

    h = hashlib.sha256()
    for folder in folders:
        known = (read_manifest(folder.parent) or {}).get("files", {})
        for p in sorted(q for q in folder.rglob("*") if q.is_file()):
            rel, size = str(p.relative_to(folder.parent)), p.stat().st_size
            h.update(f"{rel}\0{size}\0".encode())
            if rel in known and known[rel]["size"] == size:
                h.update(known[rel]["sha256"].encode())
                continue
            with open(p, "rb") as f:
                if size <= 4 * _SAMPLED_BYTES:
                    h.update(f.read())
                else:
                    h.update(f.read(_SAMPLED_BYTES))
                    f.seek(size - _SAMPLED_BYTES)
                    h.update(f.read())
    return h.hexdigest()


def key(*parts: object) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()


class DiskCache:
    """``get(key)`` / ``put(key, tensor)`` over ``<folder>/<key[:2]>/<key>.safetensors``. Entries read during
    a run are kept in memory up to ``memory_bytes`` (a typical 10-50 image LoRA dataset fits entirely), so the
    training loop opens files only for datasets larger than that."""

    def __init__(self, folder: Path, field: str, memory_bytes: int = 512 << 20):
        self.folder = folder
        self.memory_left = memory_bytes
        self._memory: dict[str, torch.Tensor] = {}
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(
                f"cannot create the cache folder {folder} ({e.strerror}); set `{field}`"
            ) from None
        for stray in folder.glob("*/.*.tmp"):  # left by a run killed mid-write
            stray.unlink(missing_ok=True)

    def path(self, k: str) -> Path:
        return self.folder / k[:2] / f"{k}.safetensors"

    def has(self, k: str) -> bool:
        return self.path(k).is_file()

    def get(self, k: str) -> torch.Tensor | None:
        """The cached tensor, or None when absent or unreadable (the entry is then removed)."""
        if k in self._memory:
            return self._memory[k]
        path = self.path(k)
        try:
            value = load_file(path)["value"]
        except FileNotFoundError:
            return None
        except (SafetensorError, OSError, KeyError) as e:
            log.warning("cache entry %s is damaged (%s): encoding it again", path, e)
            path.unlink(missing_ok=True)
            return None
        size = value.numel() * value.element_size()
        if size <= self.memory_left:
            self._memory[k] = value = value.clone()  # a private copy: the file may be replaced later
            self.memory_left -= size
        return value

    def put(self, k: str, value: torch.Tensor) -> None:
        save_tensors(self.path(k), {"value": value.detach().cpu().contiguous()})
