"""Datasets in the web UI: folders of images + `.txt` captions, created in the data dir (uploads) or registered in
place (an existing folder; the UI never deletes an image it did not upload). What the page shows per image (size,
bucket per resolution, too small, unreadable and why) comes from the trainer's own dataset code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Form, HTTPException, UploadFile
from fastapi import Path as FastPath
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from zlora.data.files import IMAGE_EXTS
from zlora.utils.io import atomic_create, atomic_write, atomic_write_text

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,99}$")
DatasetName = Annotated[str, FastPath(pattern=NAME.pattern, description="dataset name")]


class DatasetBody(BaseModel):
    name: str = Field(description="letters, digits, '.', '_', '-', ' '; at most 100 characters")
    path: str | None = Field(
        None, description="an existing folder to use in place (default: a new folder in the data dir)"
    )


class CaptionBody(BaseModel):
    text: str


class BulkBody(BaseModel):
    action: Literal["set", "replace", "prepend", "append", "insert_trigger"]
    text: str = ""
    find: str = Field("", description="for replace: the text to replace with `text`")
    images: list[str] | None = Field(None, description="image file names (default: every image)")


def safe_name(name: str) -> str:
    """An uploaded file's name without path parts; refused when nothing sensible is left."""
    base = Path(name.replace("\\", "/")).name.strip()
    if not NAME.match(base):
        raise ValueError(f"{name!r} is not a usable file name")
    return base


def router(data_dir: Path, store, max_upload_mb: int) -> APIRouter:
    api = APIRouter()
    managed = data_dir / "datasets"

    def folder(name: str) -> Path:
        row = store.dataset(name)
        if row is None:
            raise HTTPException(404, f"no dataset {name!r}")
        path = Path(row["path"])
        if not path.is_dir():
            raise HTTPException(404, f"dataset {name!r}: its folder {path} is gone")
        return path

    def inside(root: Path, file: str) -> Path:
        target = (root / file).resolve()
        if Path(file).is_absolute() or ".." in Path(file).parts or target.parent != root.resolve():
            raise HTTPException(403, "files are served only from the dataset's own folder")
        return target

    @api.post("/api/datasets")
    def create(body: DatasetBody) -> dict:
        if not NAME.match(body.name):
            raise HTTPException(422, "name: use letters, digits, '.', '_', '-' and spaces (at most 100)")
        if store.dataset(body.name):
            raise HTTPException(409, f"a dataset named {body.name!r} exists")
        if body.path:
            path = Path(body.path).expanduser().resolve()
            if not path.is_dir():
                raise HTTPException(422, f"path: {path} is not a folder")
            store.add_dataset(body.name, str(path), managed=False)
        else:
            path = managed / body.name
            path.mkdir(parents=True, exist_ok=True)
            store.add_dataset(body.name, str(path), managed=True)
        return {"name": body.name, "path": str(path)}

    @api.get("/api/datasets")
    def list_all() -> list[dict]:
        out = []
        for row in store.datasets():
            path = Path(row["path"])
            n = sum(1 for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS) if path.is_dir() else 0
            out.append(
                {"name": row["name"], "path": row["path"], "managed": bool(row["managed"]), "images": n}
            )
        return out

    @api.post("/api/datasets/{name}/files")
    async def upload(
        name: DatasetName, files: list[UploadFile], overwrite: Annotated[bool, Form()] = False
    ) -> dict:
        """Images (each must decode) and .txt captions (UTF-8); anything else, or too large, is refused by name.
        A file of that name in the dataset is never replaced unless ``overwrite`` (the page asks first): 409 when
        every file was refused for that."""
        from zlora.data.dataset import BAD_IMAGE, decode_image, why

        root = folder(name)
        kept, refused = [], []

        def write(fname: str, data: bytes) -> None:
            target = root / fname
            if overwrite:
                atomic_write(target, lambda p: p.write_bytes(data))
            elif not atomic_create(target, lambda p: p.write_bytes(data)):
                refused.append(
                    {
                        "file": fname,
                        "why": "exists in the dataset (upload again with overwrite to replace it)",
                        "exists": True,
                    }
                )
                return
            kept.append(fname)

        limit = max_upload_mb << 20
        for f in files:
            try:
                fname = safe_name(f.filename or "")
            except ValueError as e:
                refused.append({"file": f.filename, "why": str(e)})
                continue
            data = await f.read(limit + 1)
            suffix = Path(fname).suffix.lower()
            if len(data) > limit:
                refused.append(
                    {"file": fname, "why": f"larger than the {max_upload_mb} MB limit (--max-upload-mb)"}
                )
            elif suffix in IMAGE_EXTS:
                try:
                    decode_image(data)
                except BAD_IMAGE as e:
                    refused.append({"file": fname, "why": f"not a readable image ({why(e)})"})
                    continue
                write(fname, data)
            elif suffix == ".txt":
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError:
                    refused.append({"file": fname, "why": "caption is not UTF-8 text"})
                    continue
                write(fname, data)
            else:
                refused.append(
                    {"file": fname, "why": "only images (.jpg .jpeg .png .webp .bmp) and .txt captions"}
                )
        if not kept and refused:
            raise HTTPException(409 if all(r.get("exists") for r in refused) else 422, refused)
        return {"kept": kept, "refused": refused}

    @api.get("/api/datasets/{name}")
    def show(name: DatasetName, resolutions: str = "512,768,1024") -> dict:
        """Every image with its caption, size, bucket per resolution (null: too small, skipped) and problems."""
        from zlora.data.buckets import assign_bucket
        from zlora.data.dataset import BAD_IMAGE, image_size, why

        try:
            res = [int(r) for r in resolutions.split(",") if r.strip()]
        except ValueError:
            raise HTTPException(422, "resolutions: comma-separated integers, e.g. 512,768,1024") from None
        if any(r < 16 or r % 16 or r > 4096 for r in res):
            raise HTTPException(422, "resolutions must be multiples of 16 between 16 and 4096")
        root = folder(name)
        images = []
        for p in sorted(x for x in root.iterdir() if x.suffix.lower() in IMAGE_EXTS and x.is_file()):
            cap = p.with_suffix(".txt")
            item = {
                "name": p.name,
                "caption": cap.read_text(encoding="utf-8", errors="replace").strip()
                if cap.is_file()
                else None,
                "width": None,
                "height": None,
                "buckets": {},
                "problem": None,
                "url": f"/api/datasets/{name}/image/{p.name}",
            }
            try:
                w, h = image_size(p)
            except BAD_IMAGE as e:
                item["problem"] = f"unreadable: {why(e)} (the trainer skips it)"
            else:
                item.update(width=w, height=h)
                item["buckets"] = {str(r): assign_bucket(w, h, r) for r in res}
                small = [r for r, b in item["buckets"].items() if b is None]
                if small:
                    item["problem"] = (
                        f"too small for resolution {', '.join(small)} (skipped there, never upscaled)"
                    )
            images.append(item)
        return {"name": name, "path": str(root), "images": images}

    @api.get("/api/datasets/{name}/image/{file}")
    def image(name: DatasetName, file: str) -> FileResponse:
        path = inside(folder(name), file)
        if path.suffix.lower() not in IMAGE_EXTS or not path.is_file():
            raise HTTPException(404, f"no image {file}")
        return FileResponse(path)

    @api.put("/api/datasets/{name}/captions/{image}")
    def caption(name: DatasetName, image: str, body: CaptionBody) -> dict:
        """The caption file of the image named (``<stem>.txt``), nothing else: a name that is not an image of the
        dataset is refused."""
        path = inside(folder(name), image)
        if path.suffix.lower() not in IMAGE_EXTS or not path.is_file():
            raise HTTPException(404, f"no image {image} in dataset {name!r} (captions belong to images)")
        atomic_write_text(path.with_suffix(".txt"), body.text.strip() + "\n")
        return {"image": image, "caption": body.text.strip()}

    @api.post("/api/datasets/{name}/captions")
    def bulk(name: DatasetName, body: BulkBody) -> dict:
        """set / replace / prepend / append text, or insert_trigger (`[trigger]` at the start where missing).
        Says how many captions changed and how many of those are new files (an image had no caption)."""
        root = folder(name)
        names = body.images or [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTS]
        changed = created = 0
        for image_name in names:
            path = inside(root, image_name)
            if path.suffix.lower() not in IMAGE_EXTS or not path.is_file():
                raise HTTPException(
                    404, f"no image {image_name} in dataset {name!r} (captions belong to images)"
                )
            cap = path.with_suffix(".txt")
            old = cap.read_text(encoding="utf-8", errors="replace").strip() if cap.is_file() else ""
            new = {
                "set": body.text,
                "replace": old.replace(body.find, body.text) if body.find else old,
                "prepend": f"{body.text}{old}",
                "append": f"{old}{body.text}",
                "insert_trigger": old if "[trigger]" in old else f"[trigger], {old}" if old else "[trigger]",
            }[body.action].strip()
            if new != old:
                created += not cap.is_file()
                atomic_write_text(cap, new + "\n")
                changed += 1
        return {"changed": changed, "created": created, "images": len(names)}

    return api
