"""Local copies: resolve a hub reference to a complete folder (models folder, then HF cache, then pull), verify,
export out of the HF cache layout, and list what is on disk."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from tqdm.auto import tqdm

from zlora.errors import UserError
from zlora.hub.manifest import (
    HubSettings,
    check_files,
    entry,
    git_blob_sha1,
    human,
    local_files,
    model_folder,
    read_manifest,
    sha256_file,
    stale_files,
    write_manifest,
)
from zlora.hub.pull import pull, remote_files, split_ref

log = logging.getLogger(__name__)


def hf_cache_dir() -> Path:
    """The HF hub cache as the environment says now (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = (
        os.environ.get("HF_HOME")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    )
    return Path(home).expanduser() / "hub"


def check_folder(folder: Path) -> None:
    """Name every missing component of a diffusers folder at once."""
    problems = []
    if not (folder / "model_index.json").is_file():
        problems.append(f"{folder}: no model_index.json; this is not a diffusers model folder")
    for comp in ("transformer", "text_encoder", "vae"):
        sub = folder / comp
        if not (sub / "config.json").is_file():
            problems.append(f"{folder}: {comp}/ has no config.json")
        elif not any(sub.glob("*.safetensors")):
            problems.append(f"{folder}: {comp}/ has no .safetensors weights")
    if not (folder / "tokenizer").is_dir():
        problems.append(f"{folder}: tokenizer/ is missing")
    if not (folder / "scheduler").is_dir():
        problems.append(f"{folder}: scheduler/ is missing")
    if problems:
        raise UserError(problems=problems)


def _complete(folder: Path, file: str | None = None) -> bool:
    manifest = read_manifest(folder)
    if manifest is None:
        return False
    problems = stale_files(folder, manifest)
    for p in problems:
        log.warning("%s: %s", folder, p)
    return not problems and (file is None or file in manifest["files"])


def _hf_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The HF cache snapshot folder for ``repo_id@revision`` if the cache has one (no network)."""
    root = hf_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    rev = revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", rev):
        commit = rev
    else:
        try:
            commit = (root / "refs" / rev).read_text().strip()
        except OSError:
            return None
    snap = root / "snapshots" / commit
    return snap if snap.is_dir() else None


def local_model(ref: str, settings: HubSettings) -> tuple[Path, str] | None:
    """(folder, commit) of a complete local copy of a hub model (models folder, then HF cache), or None. No
    network, nothing written."""
    repo_id, revision, _ = split_ref(ref)
    folder = model_folder(settings, repo_id, revision)
    if _complete(folder):
        return folder, read_manifest(folder)["commit"]
    snap = _hf_snapshot(repo_id, revision)
    if snap is not None:
        try:
            check_folder(snap)
            return snap, snap.name
        except UserError:
            log.info("the HF cache copy of %s is incomplete", ref)
    return None


def local_file(ref: str, settings: HubSettings) -> Path | None:
    """A hub file ``org/repo/path/file`` on disk (models folder, then HF cache), or None. No network."""
    repo_id, revision, file = split_ref(ref)
    folder = model_folder(settings, repo_id, revision)
    if _complete(folder, file):
        return folder / file
    snap = _hf_snapshot(repo_id, revision)
    if snap is not None and (snap / file).is_file():
        return snap / file
    return None


def resolve_hub_model(ref: str, settings: HubSettings) -> tuple[Path, str]:
    """(folder, commit) of a complete local copy; zero network requests when one exists. Otherwise pull it
    (online) or say which command to run (offline)."""
    found = local_model(ref, settings)
    if found is not None:
        return found
    folder = pull(ref, settings)
    return folder, read_manifest(folder)["commit"]


def resolve_hub_file(ref: str, settings: HubSettings) -> Path:
    """A hub file ``org/repo/path/file``: models folder, HF cache, else pulled (or the offline error)."""
    found = local_file(ref, settings)
    return found if found is not None else pull(ref, settings) / split_ref(ref)[2]


def verify(target: str, settings: HubSettings, fix: bool = False) -> list[str]:
    """Problems of a local copy (a folder, or a reference's folder in the models folder) against its manifest;
    without a manifest, against the hub's listing (LFS sha256, git ids). ``fix`` re-fetches only the bad files."""
    folder = Path(target).expanduser()
    if not folder.is_dir():
        repo_id, revision, _ = split_ref(target)
        folder = model_folder(settings, repo_id, revision)
        if not folder.is_dir():
            raise UserError(
                f"{target}: no local copy in {settings.models_dir}; `zlora models pull {target}` first"
            )
    manifest = read_manifest(folder)
    total = sum(e["size"] for e in manifest["files"].values()) if manifest else 0
    with tqdm(total=total, unit="B", unit_scale=True, desc="sha256", disable=not total) as bar:
        if manifest is not None:
            problems = check_files(folder, manifest, bar)
        else:
            problems = _verify_against_hub(folder, target, settings)
    if problems and fix:
        if manifest is None:
            raise UserError(
                f"{folder}: no manifest, so --fix cannot tell the repo; pull it: zlora models pull ORG/NAME --to {folder}"
            )
        bad = {p.split(":")[0] for p in problems}
        pull(f"{manifest['repo']}@{manifest['commit']}", settings, to=folder, refetch=bad)
        return check_files(folder, read_manifest(folder))
    return problems


def _verify_against_hub(folder: Path, target: str, settings: HubSettings) -> list[str]:
    if settings.offline or Path(target).expanduser().is_dir():
        raise UserError(
            f"{folder}: no manifest to verify against; verify by reference (org/name) while online"
        )
    repo_id, revision, _ = split_ref(target)
    _, files = remote_files(settings, repo_id, revision, None)
    listed = {
        rel: {"size": size, **({"sha256": sha256} if sha256 else {"git_sha1": sha1})}
        for rel, (size, sha256, sha1) in files.items()
    }
    return check_files(folder, {"files": listed}, source="differs from the hub")


def export(ref: str, to: Path) -> Path:
    """Copy a model out of the HF cache (``models--org--name/snapshots/<rev>/`` -> ``blobs/``) into a plain folder:
    hardlinks on the same filesystem, copies otherwise; every file checked against its blob's hash."""
    repo_id, revision, _ = split_ref(ref)
    snap = _hf_snapshot(repo_id, revision)
    if snap is None:
        raise UserError(
            f"{ref}: not in the HF cache ({hf_cache_dir()}); set HF_HUB_CACHE / HF_HOME, or pull it"
        )
    to = Path(to).expanduser()
    if to.exists() and not to.is_dir():
        raise UserError(f"--to {to} is a file; give a folder")
    files: dict[str, dict] = {}
    rels = [str(p.relative_to(snap)) for p in sorted(snap.rglob("*")) if p.is_file()]
    for rel in tqdm(rels, desc="export", unit="file"):
        src, dest = (snap / rel).resolve(), to / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        try:
            os.link(src, dest)
        except OSError:  # another filesystem (or no hardlinks): copy
            shutil.copyfile(src, dest)
        digest, blob = sha256_file(dest), src.name
        expected_ok = digest == blob if len(blob) == 64 else (len(blob) != 40 or git_blob_sha1(dest) == blob)
        if not expected_ok:
            raise UserError(
                f"{snap / rel}: the cached file does not match its blob hash; the HF cache is damaged: "
                f"delete {src} and download it again"
            )
        files[rel] = entry(dest, digest)
    write_manifest(
        to,
        {
            "repo": repo_id,
            "revision": revision or "main",
            "commit": snap.name,
            "endpoint": None,
            "files": files,
        },
    )
    return to


def list_models(settings: HubSettings) -> list[dict]:
    """Models in the models folder and the HF cache: name, revision, size, complete, location."""
    rows = []
    if settings.models_dir.is_dir():
        for folder in sorted(p for p in settings.models_dir.iterdir() if p.is_dir()):
            manifest = read_manifest(folder)
            if manifest is None and not (folder / "model_index.json").is_file():
                continue
            size = sum((folder / f).stat().st_size for f in local_files(folder))
            rows.append(
                {
                    "name": manifest["repo"] if manifest else folder.name,
                    "revision": (manifest or {}).get("commit", "?")[:12],
                    "size": human(size),
                    "complete": "yes"
                    if manifest and not stale_files(folder, manifest)
                    else ("no manifest" if manifest is None else "no"),
                    "location": str(folder),
                }
            )
    cache = hf_cache_dir()
    if cache.is_dir():
        for root in sorted(cache.glob("models--*")):
            for snap in sorted((root / "snapshots").glob("*")):
                size = sum(p.resolve().stat().st_size for p in snap.rglob("*") if p.is_file())
                try:
                    check_folder(snap)
                    complete = "yes"
                except UserError as e:
                    complete = f"no ({e.problems[0].split(': ', 1)[-1]})"
                rows.append(
                    {
                        "name": root.name[len("models--") :].replace("--", "/"),
                        "revision": snap.name[:12],
                        "size": human(size),
                        "complete": complete,
                        "location": str(snap),
                    }
                )
    return rows
