"""Pull a model (only what a Z-Image pipeline needs) or one file from the hub or a mirror into a plain folder,
through huggingface_hub's own client: it resumes partial files with Range requests and writes nothing
half-done under a final name. Each file is hashed after download and recorded in the folder's manifest, so a
later pull skips it and a later start needs no network at all."""

from __future__ import annotations

import fnmatch
import logging
import re
import shutil
from pathlib import Path

from tqdm.auto import tqdm

from zlora.errors import UserError
from zlora.hub.manifest import (
    HubSettings,
    entry,
    git_blob_sha1,
    human,
    model_folder,
    read_manifest,
    sha256_file,
    stale_files,
    write_manifest,
)
from zlora.utils.io import make_dirs

log = logging.getLogger(__name__)
REPO_PART = re.compile(r"[A-Za-z0-9][\w.-]{0,95}")  # an org or repo name as the hub allows it
PIPELINE_PATTERNS = [
    "model_index.json",
    "scheduler/*",
    "text_encoder/*",
    "tokenizer/*",
    "transformer/*",
    "vae/*",
]


def split_ref(ref: str, revision: str | None = None) -> tuple[str, str | None, str | None]:
    """``org/name[@rev]`` or ``org/name/path/file.safetensors`` -> (repo_id, revision, file or None)."""
    ref, _, at = ref.partition("@")
    parts = ref.strip("/").split("/")
    bad = [p for p in parts[:2] if not REPO_PART.fullmatch(p) or p in (".", "..")]
    if len(parts) < 2 or not all(parts) or bad or ".." in parts:
        raise UserError(
            f"not a hub reference: {ref!r}; use org/name or org/name/path/file.safetensors "
            "(letters, digits, '-', '_', '.')"
        )
    file = "/".join(parts[2:]) or None
    return "/".join(parts[:2]), revision or at or None, file


def _api(settings: HubSettings):
    from huggingface_hub import HfApi

    check_endpoint(settings.endpoint)
    return HfApi(endpoint=settings.endpoint)


def check_endpoint(endpoint: str | None) -> None:
    from urllib.parse import urlsplit

    if endpoint is None:
        return
    url = urlsplit(endpoint)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise UserError(
            f"endpoint {endpoint!r} (--endpoint / hub.endpoint / HF_ENDPOINT) is not a URL; "
            "use e.g. https://hf-mirror.com"
        )


def network_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub's client raises when the hub cannot be reached or answers badly: its own HTTP error,
    OSError, and the HTTP library's (httpx, or httpx2 in huggingface_hub 2) transport errors."""
    import importlib

    from huggingface_hub.errors import HfHubHTTPError

    found: list[type[BaseException]] = [HfHubHTTPError, OSError]
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).HTTPError)
        except ImportError:
            pass
    return tuple(found)


def remote_files(settings: HubSettings, repo_id: str, revision: str | None, file: str | None):
    """(commit, {path: (size, sha256 or None, git sha1)}) of the files to fetch, from the hub's tree listing."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.hf_api import RepoFile

    api = _api(settings)
    where = settings.endpoint or "the hub"
    try:
        commit = api.repo_info(repo_id, revision=revision).sha
        tree = [
            f for f in api.list_repo_tree(repo_id, revision=commit, recursive=True) if isinstance(f, RepoFile)
        ]
    except RepositoryNotFoundError:
        raise UserError(
            f"{repo_id}: no such model on {where} (private or gated models need `hf auth login`)"
        ) from None
    except RevisionNotFoundError:
        raise UserError(f"{repo_id}: no revision {revision!r} on {where}") from None
    except network_errors() as e:
        if _status(e) == 404:  # a mirror that answers 404 without the hub's error code
            raise UserError(
                f"{repo_id}: not found on {where}: check the id (org/name, as on the hub)"
            ) from None
        raise UserError(
            f"{repo_id}: cannot reach {where} ({type(e).__name__}: {e}); "
            "set --endpoint / HF_ENDPOINT for a mirror, or work offline with a local copy"
        ) from None
    if file:
        wanted = [f for f in tree if f.path == file]
        if not wanted:
            raise UserError(f"{repo_id} has no file {file!r} at {revision or 'main'}")
    else:
        wanted = [f for f in tree if any(fnmatch.fnmatch(f.path, p) for p in PIPELINE_PATTERNS)]
        if not any(f.path == "model_index.json" for f in wanted):
            raise UserError(f"{repo_id} is not a diffusers pipeline (no model_index.json)")
    return commit, {f.path: (f.size, f.lfs.sha256 if f.lfs else None, f.blob_id) for f in wanted}


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def check_target(folder: Path, repo_id: str) -> None:
    """A pull goes into a new or empty folder, or one that holds a pull of the same repo (it resumes): never into a
    folder of other files (a dataset, another model), whose ``model_index.json`` it would overwrite."""
    if not folder.is_dir():
        return
    theirs = [p.name for p in folder.iterdir() if p.name != ".cache"]
    manifest = read_manifest(folder)
    ours = (manifest or {}).get("repo") == repo_id or _plan_repo(folder) == repo_id
    if theirs and not ours:
        held = (
            f"a pull of {manifest.get('repo')}"
            if manifest
            else f"{len(theirs)} other files (e.g. {theirs[0]})"
        )
        raise UserError(f"--to {folder} holds {held}; pull {repo_id} into a new or empty folder")


PLAN = Path(".cache") / "zlora-pull.json"


def write_plan(folder: Path, todo: dict[str, int], repo_id: str) -> None:
    """What this pull fetches (path -> size), for progress readers such as the web UI, and of which repo (a pull
    killed before its manifest is written still resumes)."""
    import json

    from zlora.utils.io import atomic_write_text

    atomic_write_text(folder / PLAN, json.dumps({"files": todo, "repo": repo_id}))


def _plan_repo(folder: Path) -> str | None:
    import json

    try:
        return json.loads((folder / PLAN).read_text()).get("repo")
    except (OSError, ValueError, AttributeError):
        return None


def pull_progress(folder: Path) -> tuple[int, int]:
    """(bytes on disk, bytes to fetch) of the pull under way (or last run) into ``folder``: finished files by size,
    partial ones by huggingface_hub's ``.incomplete`` files."""
    import json

    try:
        todo = json.loads((folder / PLAN).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return 0, 0
    done = sum(
        size
        for rel, size in todo.items()
        if (folder / rel).is_file() and (folder / rel).stat().st_size == size
    )
    partial = sum(p.stat().st_size for p in (folder / ".cache").rglob("*.incomplete") if p.is_file())
    return min(done + partial, sum(todo.values())), sum(todo.values())


def _matches(path: Path, size: int, sha256: str | None, sha1: str) -> tuple[bool, str]:
    digest = sha256_file(path)
    ok = path.stat().st_size == size and (digest == sha256 if sha256 else git_blob_sha1(path) == sha1)
    return ok, digest


def pull(
    ref: str,
    settings: HubSettings,
    revision: str | None = None,
    to: Path | None = None,
    refetch: set[str] | None = None,
) -> Path:
    """Download what is missing or bad into ``to`` (default: the models folder) and return the folder.
    ``refetch``: files to download again whatever the local copy says (``verify --fix``)."""
    from huggingface_hub import hf_hub_download

    repo_id, revision, file = split_ref(ref, revision)
    folder = Path(to).expanduser() if to else model_folder(settings, repo_id, revision)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--to {folder} is a file; give a folder (new or one pulled before)")
    check_target(folder, repo_id)
    if settings.offline:
        raise UserError(
            f"{ref}: offline (--offline / HF_HUB_OFFLINE) and not complete locally; "
            f"run `zlora models pull {ref}` where the hub or a mirror is reachable"
        )
    commit, files = remote_files(settings, repo_id, revision, file)
    make_dirs(folder)
    old = read_manifest(folder) or {}
    manifest = {
        "repo": repo_id,
        "revision": revision or "main",
        "commit": commit,
        "endpoint": settings.endpoint,
        "files": {k: v for k, v in old.get("files", {}).items() if old.get("commit") == commit},
    }
    changed = {p.split(":")[0] for p in stale_files(folder, manifest)}  # edited since verified: check again
    todo = []
    for rel, (size, sha256, sha1) in files.items():
        known, path = manifest["files"].get(rel), folder / rel
        if rel in (refetch or set()) or not path.is_file() or path.stat().st_size != size:
            todo.append(rel)
        elif known is None or known["size"] != size or rel in changed:  # from an interrupted pull, or edited
            ok, digest = _matches(path, size, sha256, sha1)
            if ok:
                manifest["files"][rel] = entry(path, digest)
            else:
                todo.append(rel)
    need = sum(files[r][0] for r in todo)
    free = shutil.disk_usage(folder).free
    if need > free:
        raise UserError(
            f"{ref}: needs {human(need)}, {human(free)} free on {folder}; free space or use --to / "
            "hub.models_dir / ZLORA_MODELS_DIR for another disk"
        )
    log.info("%s@%s: %d files, %s to download into %s", repo_id, commit[:10], len(todo), human(need), folder)
    write_plan(folder, {rel: files[rel][0] for rel in todo}, repo_id)
    for rel in tqdm(todo, desc="files", unit="file", disable=len(todo) < 2):
        size, sha256, sha1 = files[rel]
        try:
            # A present file is bad (wrong size or hash): without force the client trusts its own metadata.
            hf_hub_download(
                repo_id,
                rel,
                revision=commit,
                local_dir=folder,
                endpoint=settings.endpoint,
                force_download=(folder / rel).is_file(),
            )
        except network_errors() as e:
            write_manifest(folder, manifest)  # keep what is verified so far
            raise UserError(
                f"{ref}: download of {rel} failed ({type(e).__name__}: {e}); "
                "run the same command again to resume"
            ) from None
        ok, digest = _matches(folder / rel, size, sha256, sha1)
        if not ok:
            (folder / rel).unlink()
            write_manifest(folder, manifest)
            raise UserError(
                f"{ref}: {rel} arrived with the wrong hash (a corrupting proxy or mirror?); "
                "run the same command again, or try another --endpoint"
            )
        manifest["files"][rel] = entry(folder / rel, digest)
        write_manifest(folder, manifest)  # after every file: a killed pull keeps what it verified
    write_manifest(folder, manifest)
    return folder
