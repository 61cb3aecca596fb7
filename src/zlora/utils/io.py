"""Atomic file writes: every file is written to a temporary name in the same folder and renamed, so a killed
process never leaves a half-written file under the final name. Files get the user's umask (``mkstemp`` and
safetensors' writer both create 0600 files, which another user or a ComfyUI container cannot read), and a write
that fails for the user's reasons (disk full, read-only mount, a file where a folder should be) is a one-line
UserError that names the path; the temporary file is removed, the old file stays as it was."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from zlora.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def public_mode(path: Path, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have given it under the user's umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
USER_WRITE_ERRNOS = (
    *DISK_FULL,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EISDIR,
)


class WriteError(UserError):
    """Writing ``path`` failed for a reason the user can fix (``disk_full``: free space and run again)."""

    def __init__(self, message: str, path: Path, disk_full: bool):
        super().__init__(message)
        self.path, self.disk_full = path, disk_full


def write_error(path: Path, e: OSError, hint: str = "") -> WriteError:
    """A user-facing message for an OSError while writing ``path``."""
    why = (e.strerror or str(e)).lower()
    if e.errno in DISK_FULL:
        return WriteError(
            f"disk full while writing {path}; {hint + '; ' if hint else ''}free space and run the "
            "same command again",
            path,
            True,
        )
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return WriteError(f"cannot write {path}: {why}; choose a writable location", path, False)
    if e.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return WriteError(
            f"cannot write {path}: part of the path is a file, not a folder ({why})", path, False
        )
    return WriteError(f"cannot write {path}: {why}", path, False)


def make_dirs(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(folder, e) from None


@contextlib.contextmanager
def atomic_path(path: str | Path, hint: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``. ``hint`` is
    added to a disk-full error (e.g. which checkpoint is intact)."""
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e, hint) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        public_mode(tmp_path)
        os.replace(tmp_path, path)
    except OSError as e:
        raise write_error(path, e, hint) from None
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write(path: str | Path, writer: Callable[[Path], None], hint: str = "") -> None:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path, hint) as tmp:
        writer(tmp)


def atomic_create(path: str | Path, writer: Callable[[Path], None]) -> bool:
    """Like ``atomic_write``, but never replaces an existing file: False (nothing written) when ``path`` exists,
    also when it appears between the check and the rename (the final step is a hard link, which fails on an
    existing name; a file system without hard links falls back to a check just before the rename)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        return False
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        public_mode(tmp_path)
        try:
            os.link(tmp_path, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here (e.g. FAT): the check and the rename are as close as it gets
            if path.exists():
                return False
            os.replace(tmp_path, path)
        return True
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def cache_dir() -> Path:
    """zlora's cache folder: $ZLORA_CACHE_DIR, else $XDG_CACHE_HOME/zlora, else ~/.cache/zlora."""
    if os.environ.get("ZLORA_CACHE_DIR"):
        return Path(os.environ["ZLORA_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "zlora"


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    """``path`` (as written, or with links resolved) lies inside ``folder`` (likewise)."""
    candidates = {Path(os.path.abspath(path)), path.resolve()}
    roots = {Path(os.path.abspath(folder)), folder.resolve()}
    return any(c == r or r in c.parents for c in candidates for r in roots)


def check_output(
    output: str | Path,
    inputs: list[str | Path] = (),
    *,
    overwrite: bool = False,
    read_folders: list[Path] = (),
    flag: str = "-o/--output",
) -> Path:
    """Refuse, before any work, an output that would destroy what the command reads or an existing file:
    ``output`` equal to an input (also through links), inside a model folder the command reads, or already
    present without ``overwrite``."""
    out = Path(output).expanduser()
    for src in inputs:
        if _same(out, Path(src).expanduser()):
            raise UserError(f"`{flag} {output}` is also an input of this command; write to a new file")
    for folder in read_folders:
        if _inside(out, folder):
            raise UserError(
                f"`{flag} {output}` is inside the model folder {folder}, which this command reads; "
                "write somewhere else"
            )
    if out.is_dir() and out.suffix:
        raise UserError(f"`{flag} {output}` is a folder; give a file name")
    if out.exists() and not overwrite and not (out.is_dir() and not any(out.iterdir())):
        raise UserError(f"`{flag} {output}` exists; add --overwrite to replace it, or choose a new name")
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"`{flag} {output}`: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise UserError(f"`{flag} {output}`: {parent} is not writable; choose a writable location")
            break
    return out
