"""The job routes: create (validated as `zlora config validate` does), list, stop, resume, duplicate, delete, and a
job's metrics, previews, files, log and live events. Everything a page shows of a job comes from its run folder
(``zlora.runfolder``) and the job store."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Annotated

import yaml
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as FastPath
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field

from zlora.config import dump_config
from zlora.errors import UserError
from zlora.runfolder import RunFolder
from zlora.ui import form, progress
from zlora.ui.runner import Runner, alive
from zlora.ui.store import ACTIVE, Job, JobStore

JobId = Annotated[int, FastPath(ge=1, le=2**62, description="job id")]


class JobBody(BaseModel):
    config_yaml: str = Field(description="the job's config as YAML (zlora's schema)")
    start: bool = Field(True, description="queue it now (false: keep it stopped)")
    baseline: bool = Field(
        False,
        description="fill what the config leaves unset with the New Training Job form's starting values",
    )


class EditBody(BaseModel):
    config_yaml: str = Field(description="the job's new config as YAML (same job.name and output folder)")
    baseline: bool = Field(False, description="as for a new job")
    start: bool = Field(True, description="queue it again now")


def router(data_dir: Path, store: JobStore, runner: Runner, machine) -> APIRouter:
    """``machine()``: what this machine can run (``utils.machine.Machine``) for the pre-flight check."""
    api = APIRouter()

    def _checked(text: str, baseline: bool, environment: bool):
        """The config a job would train, or a 422 naming each field's problem."""
        cfg, problems = form.resolve(form.yaml_dict(text), data_dir, machine(), baseline, environment)
        if problems:
            raise HTTPException(422, [{"loc": loc, "msg": msg} for loc, msg in problems])
        return cfg

    def _job(job_id: JobId) -> Job:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    def _summary(job: Job) -> dict:
        steps = (yaml.safe_load(job.config_yaml) or {}).get("train", {}).get("steps", 0)
        final = job.run.final_lora
        return {
            "id": job.id,
            "name": job.name,
            "status": job.status,
            "error": job.error,
            "device": job.device,
            "run_dir": job.run_dir,
            "lora_path": str(final) if final.is_file() else None,
            "created": job.created,
            "started": job.started,
            "finished": job.finished,
            **progress.progress(job.run, steps, job.status, job.started),
        }

    @api.post("/api/jobs")
    def create_job(body: JobBody) -> dict:
        cfg = _checked(body.config_yaml, body.baseline, environment=False)
        run = RunFolder.of(Path(cfg.job.output_dir).expanduser().resolve(), cfg.job.name)
        run_dir = str(run.root)
        clash = [j for j in store.all() if j.run_dir == run_dir]
        if clash:
            raise HTTPException(
                409,
                f"job {clash[0].id} already trains into {run_dir}: choose another job.name, "
                "or resume or duplicate that job",
            )
        resumes = run.root.exists() and run.is_run_of(
            cfg.job.name
        )  # a run of the CLI's: the job continues it
        if run.root.exists() and not resumes:
            raise HTTPException(
                409,
                [
                    {
                        "loc": "job.name",
                        "msg": f"{run_dir} exists and is not a zlora run of {cfg.job.name!r}: "
                        "choose another job.name or job.output_dir (the UI never trains into a folder of yours)",
                    }
                ],
            )
        _checked(body.config_yaml, body.baseline, environment=True)  # what `zlora train` checks first
        status = "queued" if body.start else "stopped"
        job = store.add(cfg.job.name, dump_config(cfg), run_dir, cfg.job.device, status=status)
        if not resumes:
            try:  # the marker is what lets Delete remove this folder later, and only this one
                run.claim("zlora ui", ui_job=job.id, ui_data_dir=str(data_dir))
            except UserError as e:
                store.delete(job.id)
                raise HTTPException(422, [{"loc": "job.output_dir", "msg": " ".join(e.problems)}]) from None
        runner.poke()
        return {"id": job.id}

    @api.get("/api/jobs")
    def list_jobs() -> list[dict]:
        return [_summary(j) for j in store.all()]

    @api.get("/api/jobs/{job_id}")
    def get_job(job_id: JobId) -> dict:
        job = _job(job_id)
        return {**_summary(job), "config_yaml": job.config_yaml}

    @api.post("/api/jobs/{job_id}/stop")
    def stop_job(job_id: JobId) -> dict:
        job = _job(job_id)
        if job.status == "queued":
            store.update(job_id, status="stopped")
        elif job.status == "running":
            runner.request_stop(job)
        elif job.status != "stopping":
            raise HTTPException(409, f"job {job_id} is {job.status}, not running")
        return _summary(_job(job_id))

    @api.post("/api/jobs/{job_id}/resume")
    def resume_job(job_id: JobId) -> dict:
        job = _job(job_id)
        if job.status in (*ACTIVE, "queued"):
            raise HTTPException(409, f"job {job_id} is already {job.status}")
        if alive(job.pid) and job.pid not in {p.pid for p in runner.procs.values()}:
            raise HTTPException(
                409,
                f"job {job_id}'s previous trainer (pid {job.pid}) is still writing its "
                "checkpoint; try again in a moment",
            )
        store.update(job_id, status="queued", error=None)
        runner.poke()
        return _summary(_job(job_id))

    @api.put("/api/jobs/{job_id}/config")
    def edit_job(job_id: JobId, body: EditBody) -> dict:
        """New settings for a job that is not running and has no checkpoint yet (one that failed at start-up, or
        was created stopped); it keeps its name and run folder. With a checkpoint the settings are the run's:
        Duplicate trains with others."""
        job = _job(job_id)
        if job.status in (*ACTIVE, "queued"):
            raise HTTPException(409, f"job {job_id} is {job.status}: stop it first")
        if job.run.checkpoints.is_dir() and any(job.run.checkpoints.iterdir()):
            raise HTTPException(
                409,
                f"job {job_id} has checkpoints, so its settings are fixed (a resume continues them); "
                "Duplicate it to train with other settings",
            )
        cfg = _checked(body.config_yaml, body.baseline, environment=False)
        run_dir = str(RunFolder.of(Path(cfg.job.output_dir).expanduser().resolve(), cfg.job.name).root)
        if run_dir != job.run_dir:
            raise HTTPException(
                422,
                [
                    {
                        "loc": "job.name",
                        "msg": f"job {job_id} trains into {job.run_dir}; keep its job.name and output_dir, "
                        "or Duplicate it to train under another name",
                    }
                ],
            )
        _checked(body.config_yaml, body.baseline, environment=True)
        store.update(
            job_id,
            config_yaml=dump_config(cfg),
            device=cfg.job.device,
            error=None,
            status="queued" if body.start else "stopped",
        )
        runner.poke()
        return _summary(_job(job_id))

    @api.post("/api/jobs/{job_id}/duplicate")
    def duplicate_job(job_id: JobId) -> dict:
        job = _job(job_id)
        data = yaml.safe_load(job.config_yaml)
        names = {j.name for j in store.all()}
        n = 2
        while f"{job.name}-{n}" in names:
            n += 1
        data["job"]["name"] = f"{job.name}-{n}"
        return {"config_yaml": yaml.safe_dump(data, sort_keys=False, allow_unicode=True)}

    @api.delete("/api/jobs/{job_id}")
    def delete_job(job_id: JobId, keep_files: bool = False) -> dict:
        """The job, its log and (unless keep_files) the run folder this job created; a folder that existed before
        the job (a run of the CLI's it resumed) and any dataset stay."""
        job = _job(job_id)
        if job.status in ACTIVE:
            raise HTTPException(409, f"job {job_id} is {job.status}: stop it first")
        run = job.run
        datasets = [
            Path(d["folder_path"]).expanduser().resolve()
            for d in (yaml.safe_load(job.config_yaml) or {}).get("datasets", [])
        ]
        kept = None
        if not keep_files and run.root.is_dir():
            owner = run.owner() or {}
            ours = owner.get("created_by") == "zlora ui" and owner.get("ui_job") == job_id
            if not ours or owner.get("ui_data_dir") != str(data_dir):
                kept = f"{run.root} was not made by this job (it existed before), so it stays"
            elif any(d == run.root or run.root in d.parents or d in run.root.parents for d in datasets):
                raise HTTPException(
                    409, f"{run.root} holds or is inside a dataset folder; delete with keep_files=true"
                )
            else:
                shutil.rmtree(run.root)
        shutil.rmtree(runner.job_dir(job_id), ignore_errors=True)
        store.delete(job_id)
        return {"deleted": job_id, "kept": kept}

    @api.get("/api/jobs/{job_id}/metrics")
    def job_metrics(job_id: JobId) -> list[dict]:
        return _job(job_id).run.read_metrics()

    @api.get("/api/jobs/{job_id}/samples")
    def job_samples(job_id: JobId) -> list[dict]:
        """Every preview image with its step, prompt index, seed and the prompt's text."""
        job = _job(job_id)
        prompts = (yaml.safe_load(job.config_yaml) or {}).get("sample", {}).get("prompts") or []
        texts = [p.get("prompt") if isinstance(p, dict) else p for p in prompts]
        return [
            {
                **s,
                "prompt": texts[s["prompt_index"]] if s["prompt_index"] < len(texts) else None,
                "url": f"/api/jobs/{job_id}/file/{s['path']}",
            }
            for s in job.run.sample_images()
        ]

    @api.get("/api/jobs/{job_id}/files")
    def job_files(job_id: JobId) -> list[dict]:
        job = _job(job_id)
        return [{**f, "url": f"/api/jobs/{job_id}/file/{f['path']}"} for f in job.run.lora_files()]

    @api.get("/api/jobs/{job_id}/log")
    def job_log(job_id: JobId, tail: Annotated[int, Query(ge=1, le=5000)] = 200) -> dict:
        _job(job_id)
        path = runner.log_path(job_id)
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
        lines = [ln.rsplit("\r", 1)[-1] for ln in text.splitlines()]  # progress bars: the last redraw
        return {"text": "\n".join(lines[-tail:])}

    @api.get("/api/jobs/{job_id}/file/{path:path}")
    def job_file(job_id: JobId, path: str) -> FileResponse:
        job = _job(job_id)
        root = Path(job.run_dir).resolve()
        target = (root / path).resolve()
        if Path(path).is_absolute() or ".." in Path(path).parts or root not in target.parents:
            raise HTTPException(404, "no such file in this job's run folder")
        if not target.is_file():
            raise HTTPException(404, f"{path}: not in the run folder (yet)")
        name = (
            f"{job.name}-{target.parent.name}.safetensors"
            if target.name == "lora.safetensors"
            else target.name
        )
        return FileResponse(target, filename=name if target.suffix == ".safetensors" else None)

    @api.get("/api/jobs/{job_id}/events")
    async def job_events(job_id: JobId, request: Request) -> StreamingResponse:
        """Server-sent events: the job's summary each time it changes (checked every 0.25 s)."""
        _job(job_id)

        async def stream():
            last, beat = None, time.monotonic()
            while not await request.is_disconnected():
                job = store.get(job_id)
                if job is None:
                    yield "event: deleted\ndata: {}\n\n"
                    return
                now = json.dumps(_summary(job))
                if now != last:
                    yield f"data: {now}\n\n"
                    last, beat = now, time.monotonic()
                elif time.monotonic() - beat > 15:
                    yield ": keep-alive\n\n"
                    beat = time.monotonic()
                await asyncio.sleep(0.25)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return api
