"""safetensors files: reading with one-line errors for files that are not (complete) safetensors, and a writer
whose bytes depend only on the content.

Why a writer of our own: safetensors' ``save_file`` (0.8) serialises the metadata through a hash map, so the same
LoRA saved twice gets different bytes (and a different sha256); it also needs every tensor in memory at once,
which ``lora bake`` cannot afford for the 12 GB transformer. The format is simple (8-byte header length, a JSON
header, raw little-endian bytes); files written here are read back by safetensors itself in the tests.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path

import torch

from zlora.errors import UserError
from zlora.utils.io import atomic_path

DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
DTYPE_OF = {v: k for k, v in DTYPES.items()}


def write_streaming(
    path: Path,
    specs: list[tuple[str, torch.dtype, list[int]]],
    tensors: Iterable[torch.Tensor],
    metadata: dict[str, str],
    hint: str = "",
) -> None:
    """Write a safetensors file whose tensors arrive one at a time, in ``specs`` order (atomically)."""
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    offset = 0
    for key, dtype, shape in specs:
        size = dtype.itemsize * int(torch.Size(shape).numel())
        header[key] = {"dtype": DTYPES[dtype], "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with atomic_path(path, hint) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for (key, dtype, shape), t in zip(specs, tensors, strict=True):
            if t.dtype != dtype or list(t.shape) != shape:
                raise RuntimeError(f"{key}: got {t.dtype} {list(t.shape)}, header says {dtype} {shape}")
            if t.numel():
                f.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # no bytes copy


def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None, hint: str = ""
) -> None:
    """``save_file`` with deterministic bytes: tensors ordered by (alignment, name) as safetensors does, so every
    tensor starts aligned to its element size, and metadata keys sorted."""
    keys = sorted(tensors, key=lambda k: (-tensors[k].dtype.itemsize, k))
    specs = [(k, tensors[k].dtype, list(tensors[k].shape)) for k in keys]
    write_streaming(
        Path(path), specs, (tensors[k] for k in keys), {k: str(v) for k, v in (metadata or {}).items()}, hint
    )


def open_error(path: Path, e: Exception) -> UserError:
    """What is wrong with a file safetensors could not open, in one line."""
    size = path.stat().st_size if path.is_file() else 0
    if size == 0:
        why = "the file is empty"
    elif size < 8:
        why = f"the file is only {size} bytes"
    else:
        with open(path, "rb") as f:
            head = f.read(16)
        n = struct.unpack("<Q", head[:8])[0]
        if head[:2] == b"PK" or head[:1] == b"\x80":
            why = "this is a pickle/zip file (e.g. .pt/.ckpt), not safetensors"
        elif head[8:9] != b"{":
            why = "not a valid safetensors file (no JSON header)"
        elif n > size - 8:
            why = f"the file is truncated ({size} bytes; its header alone says {n + 8})"
        else:
            why = f"not a valid safetensors file ({str(e).splitlines()[0][:80]})"
    return UserError(f"{path}: {why}; download or write it again")


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a damaged file is a UserError naming it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise open_error(path, e) from None


def open_safetensors(path: str | Path):
    """``safe_open(path)`` whose failure to open is a UserError naming the file (use as a context manager)."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise open_error(Path(path), e) from None
