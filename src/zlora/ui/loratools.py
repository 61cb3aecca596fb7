"""The LoRA tools page's API over `zlora lora` (the same functions, run in the server's worker threads): pick a LoRA
from a finished job or an upload, inspect it (report + per-block x component delta norms for the heat map), scale,
merge, convert. Every result is a new file in `<data dir>/loras/`; inputs are never written."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter, HTTPException, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from zlora.errors import UserError
from zlora.ui.datasets import safe_name
from zlora.vocab import SCALE_GROUPS, SLIDER_GROUPS, split_block


class ScaleBody(BaseModel):
    lora: str = Field(description="a LoRA reference from GET /api/loras (file:NAME or job:ID:PATH)")
    ratio: float = 1.0
    components: dict[str, float] = Field(
        default_factory=dict, description="adaln, qk, v, attn_out, ffn, w1-3"
    )
    layers: str = Field("", description='per-layer multipliers, e.g. "0-9:0.5,20-29:1.2"')
    name: str | None = Field(None, description="output file name (default: <input>-scaled.safetensors)")


class MergeInput(BaseModel):
    lora: str
    weight: float = 1.0
    components: dict[str, float] = Field(default_factory=dict)
    layers: str = ""


class MergeBody(BaseModel):
    inputs: list[MergeInput] = Field(min_length=1)
    rank: int | None = Field(None, description="reduce to this rank (SVD); none: exact")
    name: str | None = Field(None, description="output file name (default: <a>+<b>-merged.safetensors)")


class ConvertBody(BaseModel):
    lora: str
    to: str = Field(description="zlora, diffusers, comfy (ComfyUI incl. bypass), comfy-fused, kohya")
    name: str | None = Field(None, description="output file name (default: <input>-<format>.safetensors)")


class RefBody(BaseModel):
    lora: str


def resolve_ref(data_dir: Path, store, ref: str) -> Path:
    """``file:NAME`` (uploads and results) or ``job:ID:PATH`` (a job's LoRA) -> the file, or 404."""
    kind, _, rest = ref.partition(":")
    if kind == "file":
        folder = (data_dir / "loras").resolve()
        path = (folder / rest).resolve()
        if path.parent != folder or not path.is_file():
            raise HTTPException(404, f"no LoRA file {rest!r} in the LoRA folder")
        return path
    if kind == "job":
        job_id, _, rel = rest.partition(":")
        job = store.get(int(job_id)) if job_id.isdigit() and len(job_id) < 12 else None
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        root = Path(job.run_dir).resolve()
        path = (root / rel).resolve()
        if root not in path.parents or path.suffix != ".safetensors" or not path.is_file():
            raise HTTPException(404, f"job {job_id} has no LoRA {rel!r}")
        return path
    raise HTTPException(422, "lora: use a reference from GET /api/loras (file:NAME or job:ID:PATH)")


def router(data_dir: Path, store) -> APIRouter:
    api = APIRouter()
    folder = data_dir / "loras"

    def resolve(ref: str) -> Path:
        return resolve_ref(data_dir, store, ref)

    def stem_of(path: Path) -> str:
        """A LoRA's name for its results: a checkpoint's ``lora.safetensors`` is ``<run>-step-000250``."""
        if path.name == "lora.safetensors" and path.parent.name.startswith("step-"):
            return f"{path.parents[2].name}-{path.parent.name}"
        return path.stem

    def result_name(stem: str, name: str | None = None) -> Path:
        """The output file: the name asked for (never over an existing file), else ``<stem>.safetensors`` made
        unique with -2, -3, ..."""
        folder.mkdir(parents=True, exist_ok=True)
        if name:
            try:
                base = safe_name(name.strip())
            except ValueError as e:
                raise HTTPException(422, f"name: {e}") from None
            target = folder / (base if base.endswith(".safetensors") else f"{base}.safetensors")
            if target.exists():
                raise HTTPException(
                    409, f"name: {target.name} exists in the LoRA folder; choose another name"
                )
            return target
        target, n = folder / f"{stem}.safetensors", 2
        while target.exists():
            target, n = folder / f"{stem}-{n}.safetensors", n + 1
        return target

    def done(path: Path, report: str = "") -> dict:
        return {
            "file": path.name,
            "lora": f"file:{path.name}",
            "url": f"/api/loras/file/{path.name}",
            "report": report,
        }

    def run(fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except UserError as e:
            raise HTTPException(400, " ".join(e.problems)) from None

    @api.get("/api/loras")
    def list_loras() -> list[dict]:
        """Uploaded and produced files, and the final / checkpoint LoRAs of every job; newest first."""
        out = []
        if folder.is_dir():
            out += [
                {
                    "lora": f"file:{p.name}",
                    "name": p.name,
                    "source": "file",
                    "url": f"/api/loras/file/{p.name}",
                    "mtime": p.stat().st_mtime,
                }
                for p in sorted(folder.glob("*.safetensors"))
            ]
        for job in store.all():
            for f in job.run.lora_files():
                out.append(
                    {
                        "lora": f"job:{job.id}:{f['path']}",
                        "name": f"{job.name}: {f['name']}",
                        "source": "job",
                        "url": f"/api/jobs/{job.id}/file/{f['path']}",
                        "mtime": (job.run.root / f["path"]).stat().st_mtime,
                    }
                )
        return sorted(out, key=lambda x: -x["mtime"])

    @api.post("/api/lora/upload")
    async def upload(file: UploadFile) -> dict:
        """A .safetensors LoRA (its header must parse; pickles are never loaded)."""
        from zlora.utils.tensorfile import read_tensors

        try:
            name = safe_name(file.filename or "")
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        if not name.endswith(".safetensors"):
            raise HTTPException(
                422, f"{name}: only .safetensors LoRA files are accepted (pickles are never loaded)"
            )
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".upload-{time.time_ns()}.safetensors"
        tmp.write_bytes(await file.read())
        try:
            read_tensors(tmp)
        except UserError as e:
            tmp.unlink(missing_ok=True)
            raise HTTPException(400, " ".join(e.problems).replace(str(tmp), name)) from None
        target = folder / name
        if target.exists():
            target = result_name(Path(name).stem)  # an upload never replaces a file: name-2, name-3, ...
        tmp.rename(target)
        return done(target)

    @api.get("/api/loras/file/{name}")
    def download(name: str) -> FileResponse:
        path = resolve(f"file:{name}")
        return FileResponse(path, filename=path.name)

    @api.post("/api/lora/inspect")
    def inspect(body: RefBody) -> dict:
        from zlora.lora.tools import delta_table, inspect_lora, needs_base, read_lora_modules

        path = resolve(body.lora)
        report = run(inspect_lora, path, True)
        modules, fmt, _ = run(read_lora_modules, path, True)
        table, other = ({}, []) if needs_base(modules) else delta_table(modules)  # the report says why
        inside = {w[2] for w in (split_block(n) for n in modules) if w}
        groups = [g for g in SLIDER_GROUPS if inside & set(SCALE_GROUPS[g][0])]
        layers = [w[1] for w in (split_block(n) for n in modules) if w and w[0] == "layers"]
        return {
            "report": report,
            "format": fmt,
            "table": table,
            "other": other,
            "groups": groups,  # the Scale sliders that act on this LoRA
            "layers": max(layers) + 1 if layers else 0,
        }

    @api.post("/api/lora/scale")
    def scale(body: ScaleBody) -> dict:
        from zlora.lora.edit import COMPONENTS, Multipliers, parse_layer_spec
        from zlora.lora.tools import scale_lora

        src = resolve(body.lora)
        bad = sorted(set(body.components) - set(COMPONENTS))
        if bad:
            raise HTTPException(422, f"components: {bad} are not among {', '.join(COMPONENTS)}")
        mult = Multipliers(body.ratio, body.components, run(parse_layer_spec, body.layers))
        out = result_name(f"{stem_of(src)}-scaled", body.name)
        run(scale_lora, src, out, mult)
        return done(out)

    @api.post("/api/lora/merge")
    def merge(body: MergeBody) -> dict:
        from zlora.lora.edit import Multipliers, parse_layer_spec
        from zlora.lora.tools import merge_loras

        paths = [resolve(i.lora) for i in body.inputs]
        inputs = [(str(p), i.weight) for p, i in zip(paths, body.inputs, strict=True)]
        mults = [Multipliers(1.0, i.components, run(parse_layer_spec, i.layers)) for i in body.inputs]
        if body.rank is not None and body.rank < 1:
            raise HTTPException(422, "rank: a positive integer, or null for an exact merge")
        out = result_name("+".join(dict.fromkeys(stem_of(p) for p in paths)) + "-merged", body.name)
        kept = run(merge_loras, inputs, out, body.rank, mults)
        report = ""
        if kept:
            worst = min(kept, key=kept.get)
            report = (
                f"kept energy: mean {sum(kept.values()) / len(kept):.4f}, lowest {kept[worst]:.4f} ({worst})"
            )
        return done(out, report)

    @api.post("/api/lora/convert")
    def convert(body: ConvertBody) -> dict:
        from zlora.lora.codecs import resolve_format
        from zlora.lora.tools import convert_lora

        src = resolve(body.lora)
        fmt = run(resolve_format, body.to)
        out = result_name(f"{stem_of(src)}-{body.to}", body.name)
        source = run(convert_lora, src, out, fmt)
        return done(out, f"{source} -> {fmt}")

    return api
