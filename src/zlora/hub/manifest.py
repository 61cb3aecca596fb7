"""Where models live, the manifest each pulled/exported folder carries, and hashing.

A manifest (``zlora-manifest.json``) lists every file with its size and sha256 plus the repo and the commit it
came from. "Complete" (checked at every start, no hashing) means every listed file exists with its size;
``verify`` re-hashes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from zlora.errors import UserError
from zlora.utils.io import atomic_write_text, cache_dir

log = logging.getLogger(__name__)

MANIFEST = "zlora-manifest.json"
CHUNK = 8 << 20  # hashing buffer: large reads keep sha256 at disk/CPU speed
SKIP_DIRS = {".cache"}  # huggingface_hub's local_dir download metadata


@dataclass(frozen=True)
class HubSettings:
    models_dir: Path
    endpoint: str | None
    offline: bool


def hub_settings(
    models_dir: str | None = None, endpoint: str | None = None, offline: bool = False
) -> HubSettings:
    """Explicit values (config ``hub.*`` or CLI flags) win over ZLORA_MODELS_DIR / HF_ENDPOINT / HF_HUB_OFFLINE,
    read now (huggingface_hub reads its environment once, at import)."""
    folder = models_dir or os.environ.get("ZLORA_MODELS_DIR") or cache_dir() / "models"
    env_offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return HubSettings(
        Path(folder).expanduser(), endpoint or os.environ.get("HF_ENDPOINT") or None, offline or env_offline
    )


def model_folder(settings: HubSettings, repo_id: str, revision: str | None) -> Path:
    name = repo_id.replace("/", "--") + (f"--{revision}" if revision else "")
    return settings.models_dir / name


def sha256_file(path: Path, progress=None) -> str:
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            if progress is not None:
                progress.update(n)
    return h.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The git object id of a (small, non-LFS) file: what the hub lists as its ``oid``."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_manifest(folder: Path, manifest: dict) -> None:
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def local_files(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file()
        and p.name != MANIFEST
        and not SKIP_DIRS & set(p.relative_to(folder).parts)
        and not p.name.endswith(".incomplete")
    )


def missing_or_wrong_size(folder: Path, manifest: dict) -> list[str]:
    """Manifest files that are absent or have another size (no hashing: cheap enough for every start)."""
    bad = []
    for rel, entry in manifest["files"].items():
        p = folder / rel
        if not p.is_file():
            bad.append(f"{rel}: missing")
        elif p.stat().st_size != entry["size"]:
            bad.append(f"{rel}: wrong size ({p.stat().st_size} bytes, expected {entry['size']})")
    return bad


def entry(path: Path, digest: str) -> dict:
    """A manifest entry for a file just hashed: size, sha256 and the mtime it had then (a later start re-hashes
    the file when its mtime differs, so a copy edited after it was verified is never used unchecked)."""
    st = path.stat()
    return {"size": st.st_size, "sha256": digest, "mtime_ns": st.st_mtime_ns}


def _hash_ok(path: Path, e: dict) -> bool:
    return sha256_file(path) == e["sha256"] if "sha256" in e else git_blob_sha1(path) == e["git_sha1"]


def stale_files(folder: Path, manifest: dict) -> list[str]:
    """What a start must not use, without hashing unchanged files: missing files, wrong sizes, and files whose
    mtime differs from the manifest's that no longer hash to it (those that still do get their new mtime
    recorded, so they are hashed once)."""
    problems = missing_or_wrong_size(folder, manifest)
    named = {p.split(":")[0] for p in problems}
    touched = False
    for rel, e in manifest["files"].items():
        path = folder / rel
        if rel in named or e.get("mtime_ns") == path.stat().st_mtime_ns:
            continue
        log.info("%s changed on disk since it was verified: hashing it again", path)
        if _hash_ok(path, e):
            e["mtime_ns"] = path.stat().st_mtime_ns
            touched = True
        else:
            problems.append(f"{rel}: changed on disk since it was verified (sha256 differs)")
    if touched:
        try:
            write_manifest(folder, manifest)
        except UserError:  # a read-only copy: it is re-hashed at the next start again
            pass
    return problems


def check_files(
    folder: Path, manifest: dict, progress=None, source: str = "sha256 differs from the manifest"
):
    """Every problem of the folder against ``manifest["files"]``: missing, wrong size, wrong hash (one line
    each). An entry is checked by its ``sha256``, or, for a small file listed by the hub, its ``git_sha1``."""
    problems = missing_or_wrong_size(folder, manifest)
    named = {p.split(":")[0] for p in problems}
    for rel, entry in manifest["files"].items():
        if rel in named:
            continue
        if "sha256" in entry:
            ok = sha256_file(folder / rel, progress) == entry["sha256"]
        else:
            ok = _hash_ok(folder / rel, entry)
        if not ok:
            problems.append(f"{rel}: wrong hash ({source})")
    return problems


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"
