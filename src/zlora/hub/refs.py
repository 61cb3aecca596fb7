"""What a model or file reference in a config points at, without loading anything: a local folder or file, a
hub id, or a mistake (one line naming the field). ``models.load`` resolves through these; the pre-flight check
(``train/preflight.py``) asks them with ``fetch=False`` to learn, before any download, what would fail."""

from __future__ import annotations

import re
from pathlib import Path

from zlora.errors import UserError
from zlora.hub.local import check_folder, local_file, local_model, resolve_hub_file, resolve_hub_model
from zlora.hub.manifest import HubSettings

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$")


def offline_missing(ref: str) -> str:
    return (
        f"{ref}: offline (--offline / HF_HUB_OFFLINE) and not complete locally; "
        f"run `zlora models pull {ref}` where the hub or a mirror is reachable"
    )


def model_folder_of(ref: str, settings: HubSettings, fetch: bool = True) -> tuple[Path, str | None] | None:
    """(folder, commit) of a local diffusers folder or a hub id (not ``builtin:*``). A hub model not on disk is
    pulled when ``fetch``, else None (offline: the error that a run would give)."""
    path = Path(ref).expanduser()
    if path.exists():
        if path.is_file():
            raise UserError(
                f"`model.name_or_path` is a file: {path}; single-file transformers are not supported yet, "
                "point it at a diffusers folder (model_index.json, transformer/, text_encoder/, vae/, ...)"
            )
        check_folder(path)
        return path, None
    if re.match(r"^[A-Za-z]:\\", ref) or "\\" in ref:
        raise UserError(
            f"`model.name_or_path` looks like a Windows path ({ref}); use a POSIX path on this machine"
        )
    if ref.startswith(("./", "../", "/", "~")) or ref in (".", ".."):
        raise UserError(
            f"`model.name_or_path` folder not found: {path.absolute()}; check the path, or give a "
            "hub id such as Tongyi-MAI/Z-Image-Turbo"
        )
    if not HUB_ID.match(ref):
        raise UserError(f"`model.name_or_path` is neither a folder nor a hub id (org/name): {ref}")
    if fetch:
        return resolve_hub_model(ref, settings)
    found = local_model(ref, settings)
    if found is None and settings.offline:
        raise UserError(offline_missing(ref))
    return found


def file_of(ref: str, field: str, settings: HubSettings, fetch: bool = True) -> Path | None:
    """A ``.safetensors`` FILE: a local path, or a hub file ``org/repo/path/file.safetensors`` (pulled when
    ``fetch``; else None when not on disk, the offline error when offline)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        inside = ", ".join(sorted(p.name for p in path.glob("*.safetensors"))) or "(no .safetensors files)"
        raise UserError(f"`{field}` is a folder: {path}. Point it at one of: {inside}")
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise UserError(f"`{field}` must be a .safetensors file (pickle files are never loaded): {path}")
        return path
    if re.match(r"^[A-Za-z]:[\\/]", ref) or "\\" in ref:
        raise UserError(f"`{field}` looks like a Windows path ({ref}); use a POSIX path on this machine")
    parts = ref.split("/")
    if len(parts) < 3 or not ref.endswith(".safetensors") or ref.startswith(("/", ".", "~")):
        raise UserError(
            f"`{field}` not found: {ref}; give a local .safetensors file or org/repo/file.safetensors"
        )
    if fetch:
        return resolve_hub_file(ref, settings)
    found = local_file(ref, settings)
    if found is None and settings.offline:
        raise UserError(f"`{field}` {offline_missing(ref)}")
    return found
