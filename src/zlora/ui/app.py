"""The web UI's ASGI app: routes only. Configs go through the same schema and messages as `zlora config validate`,
training runs through the runner (`zlora train` in a child process), files come only from the run folders of the
UI's jobs. Torch is never imported here, so the server starts in well under a second of our own time."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import yaml
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as FastPath
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from zlora import __version__
from zlora.config import dump_config, read_yaml, validate
from zlora.config.load import check_paths
from zlora.config.schema import ARCH_PRESETS, TURBO_ADAPTERS, Config, sampling_defaults
from zlora.errors import UserError
from zlora.ui import datasets, loratools, progress, tasks
from zlora.ui.runner import Runner, alive
from zlora.ui.store import ACTIVE, Job, JobStore

STATIC = Path(__file__).parent / "static"
TOKEN_COOKIE = "zlora_token"
# The guide's panels (training guide, section 6) and the config fields each one shows.
PANELS = [
    {"id": "job", "title": "Job", "fields": ["job.name", "job.trigger_word", "job.device", "job.output_dir"]},
    {
        "id": "model",
        "title": "Model",
        "fields": ["model.arch", "model.name_or_path", "model.assistant_lora_path", "model.dtype"],
    },
    {
        "id": "quantization",
        "title": "Quantization",
        "fields": ["model.quantize", "model.qtype", "model.quantize_te", "model.qtype_te"],
    },
    {
        "id": "target",
        "title": "Target",
        "fields": [
            "network.linear",
            "network.linear_alpha",
            "network.preset",
            "network.target_blocks",
            "network.dropout",
        ],
    },
    {
        "id": "save",
        "title": "Save",
        "fields": ["save.dtype", "save.save_every", "save.max_step_saves_to_keep"],
    },
    {
        "id": "training",
        "title": "Training",
        "fields": [
            "train.batch_size",
            "train.steps",
            "train.gradient_accumulation",
            "train.optimizer",
            "train.lr",
            "train.weight_decay",
            "train.lr_scheduler",
            "train.lr_warmup_steps",
            "train.loss_type",
            "train.timestep_type",
            "train.timestep_bias",
            "train.ema_config.use_ema",
            "train.ema_config.ema_decay",
            "train.cache_text_embeddings",
            "train.unload_text_encoder",
            "train.gradient_checkpointing",
            "train.compile",
            "train.diff_output_preservation",
            "train.diff_output_preservation_class",
            "train.diff_output_preservation_multiplier",
            "train.seed",
        ],
    },
    {
        "id": "datasets",
        "title": "Datasets",
        "list": "datasets",
        "fields": [
            "folder_path",
            "caption_ext",
            "default_caption",
            "caption_dropout_rate",
            "resolution",
            "cache_latents",
            "num_repeats",
            "flip_x",
            "is_reg",
            "prior_reg",
        ],
    },
    {
        "id": "sample",
        "title": "Sample",
        "fields": [
            "sample.sample_every",
            "sample.sample_steps",
            "sample.guidance_scale",
            "sample.width",
            "sample.height",
            "sample.seed",
            "sample.walk_seed",
            "sample.prompts",
        ],
    },
    {
        "id": "advanced",
        "title": "Advanced",
        "fields": ["train.do_differential_guidance", "train.differential_guidance_scale"],
    },
]


JobId = Annotated[int, FastPath(ge=1, le=2**62, description="job id")]


class ConfigBody(BaseModel):
    config: dict[str, Any] = Field(default_factory=dict, description="a (partial) config as nested sections")


class YamlBody(BaseModel):
    yaml: str = Field(description="config YAML")


class JobBody(BaseModel):
    config_yaml: str = Field(description="the job's config as YAML (zlora's schema)")
    start: bool = Field(True, description="queue it now (false: keep it stopped)")


def create_app(
    data_dir: Path, token: str | None = None, start_runner: bool = True, max_upload_mb: int = 50
) -> FastAPI:
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(data_dir / "zlora.db")
    runner = Runner(store, data_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_runner:
            runner.start()
        yield
        runner.shutdown()

    app = FastAPI(
        title="zlora",
        version=__version__,
        lifespan=lifespan,
        description="Train Z-Image LoRAs: jobs, progress, samples.",
    )
    app.state.store, app.state.runner, app.state.data_dir = store, runner, data_dir

    # ------------------------------------------------------------------ auth and errors
    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if (
            token is None
            or request.url.path in ("/login", "/api/health")
            or request.url.path.startswith("/static/")
        ):
            return await call_next(request)
        given = request.cookies.get(TOKEN_COOKIE) or request.headers.get("authorization", "").removeprefix(
            "Bearer "
        )
        if given and hmac.compare_digest(given, token):
            return await call_next(request)
        if request.url.path.startswith("/api/") or request.url.path == "/openapi.json":
            return JSONResponse({"detail": "missing or wrong token: send Authorization: Bearer TOKEN"}, 401)
        return RedirectResponse("/login")

    @app.exception_handler(UserError)
    async def _user_error(request: Request, e: UserError):
        return JSONResponse({"detail": " ".join(e.problems)}, 400)

    # ------------------------------------------------------------------ pages
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page() -> HTMLResponse:
        return HTMLResponse((STATIC / "login.html").read_text(encoding="utf-8"))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> JSONResponse:
        try:
            given = str((await request.json()).get("token", ""))
        except (ValueError, AttributeError):
            raise HTTPException(400, 'send {"token": "..."}') from None
        if token is None or not hmac.compare_digest(given, token):
            raise HTTPException(401, "wrong token")
        resp = JSONResponse({"ok": True})
        resp.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict")
        return resp

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(datasets.router(data_dir, store, max_upload_mb))
    app.include_router(loratools.router(data_dir, store))
    app.include_router(tasks.router(data_dir, store))

    # ------------------------------------------------------------------ config
    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok", "version": __version__}

    @app.get("/api/schema")
    def schema() -> dict:
        """The config schema (field types, defaults, help from the docstrings), the panels, the arch presets, the
        built-in models' sampling settings (the Generate page fills them)."""
        return {
            "schema": Config.model_json_schema(),
            "panels": PANELS,
            "arch_presets": ARCH_PRESETS,
            "adapters": TURBO_ADAPTERS,
            "default_output_dir": str(data_dir / "output"),
            "builtin_sampling": {m: sampling_defaults(m) for m in ("builtin:shapes", "builtin:tiny")},
        }

    def _with_ui_defaults(data: dict) -> dict:
        data = json.loads(json.dumps(data))  # a private copy
        job = data.setdefault("job", {}) if isinstance(data.get("job", {}), dict) else data["job"]
        if isinstance(job, dict):
            job.setdefault("output_dir", str(data_dir / "output"))
        return data

    @app.post("/api/config/resolve")
    def resolve(body: ConfigBody) -> dict:
        """The config with every default and arch preset filled in, or the per-field problems."""
        cfg, problems = validate(_with_ui_defaults(body.config))
        return {
            "config": cfg.model_dump(mode="json") if cfg else None,
            "yaml": dump_config(cfg) if cfg else None,
            "errors": [{"loc": loc, "msg": msg} for loc, msg in problems],
        }

    @app.post("/api/config/parse")
    def parse_yaml(body: YamlBody) -> dict:
        return {"config": _yaml_dict(body.yaml)}

    # ------------------------------------------------------------------ jobs
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
            **progress.progress(job.run, steps),
        }

    @app.post("/api/jobs")
    def create_job(body: JobBody) -> dict:
        data = _with_ui_defaults(_yaml_dict(body.config_yaml))
        cfg, problems = validate(data)
        if problems:
            raise HTTPException(422, [{"loc": loc, "msg": msg} for loc, msg in problems])
        try:
            check_paths(cfg)
        except UserError as e:
            raise HTTPException(422, [{"loc": "datasets", "msg": p} for p in e.problems]) from None
        run_dir = str(Path(cfg.job.output_dir).expanduser().resolve() / cfg.job.name)
        clash = [j for j in store.all() if j.run_dir == run_dir]
        if clash:
            raise HTTPException(
                409,
                f"job {clash[0].id} already trains into {run_dir}: choose another job.name, "
                "or resume or duplicate that job",
            )
        job = store.add(
            cfg.job.name,
            dump_config(cfg),
            run_dir,
            cfg.job.device,
            status="queued" if body.start else "stopped",
        )
        runner.poke()
        return {"id": job.id}

    @app.get("/api/jobs")
    def list_jobs() -> list[dict]:
        return [_summary(j) for j in store.all()]

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: JobId) -> dict:
        job = _job(job_id)
        return {**_summary(job), "config_yaml": job.config_yaml}

    @app.post("/api/jobs/{job_id}/stop")
    def stop_job(job_id: JobId) -> dict:
        job = _job(job_id)
        if job.status == "queued":
            store.update(job_id, status="stopped")
        elif job.status == "running":
            runner.request_stop(job)
        elif job.status != "stopping":
            raise HTTPException(409, f"job {job_id} is {job.status}, not running")
        return _summary(_job(job_id))

    @app.post("/api/jobs/{job_id}/resume")
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

    @app.post("/api/jobs/{job_id}/duplicate")
    def duplicate_job(job_id: JobId) -> dict:
        job = _job(job_id)
        data = yaml.safe_load(job.config_yaml)
        names = {j.name for j in store.all()}
        n = 2
        while f"{job.name}-{n}" in names:
            n += 1
        data["job"]["name"] = f"{job.name}-{n}"
        return {"config_yaml": yaml.safe_dump(data, sort_keys=False, allow_unicode=True)}

    @app.delete("/api/jobs/{job_id}")
    def delete_job(job_id: JobId, keep_files: bool = False) -> dict:
        """The job, its log and (unless keep_files) its run folder; never a dataset."""
        job = _job(job_id)
        if job.status in ACTIVE:
            raise HTTPException(409, f"job {job_id} is {job.status}: stop it first")
        run_dir = Path(job.run_dir)
        datasets = [
            Path(d["folder_path"]).expanduser().resolve()
            for d in (yaml.safe_load(job.config_yaml) or {}).get("datasets", [])
        ]
        if not keep_files and run_dir.is_dir():
            if any(d == run_dir or run_dir in d.parents or d in run_dir.parents for d in datasets):
                raise HTTPException(
                    409, f"{run_dir} holds or is inside a dataset folder; delete with keep_files=true"
                )
            shutil.rmtree(run_dir)
        shutil.rmtree(runner.job_dir(job_id), ignore_errors=True)
        store.delete(job_id)
        return {"deleted": job_id}

    @app.get("/api/jobs/{job_id}/metrics")
    def job_metrics(job_id: JobId) -> list[dict]:
        return _job(job_id).run.read_metrics()

    @app.get("/api/jobs/{job_id}/samples")
    def job_samples(job_id: JobId) -> list[dict]:
        return [
            {**s, "url": f"/api/jobs/{job_id}/file/{s['path']}"} for s in _job(job_id).run.sample_images()
        ]

    @app.get("/api/jobs/{job_id}/files")
    def job_files(job_id: JobId) -> list[dict]:
        job = _job(job_id)
        return [{**f, "url": f"/api/jobs/{job_id}/file/{f['path']}"} for f in job.run.lora_files()]

    @app.get("/api/jobs/{job_id}/log")
    def job_log(job_id: JobId, tail: Annotated[int, Query(ge=1, le=5000)] = 200) -> dict:
        _job(job_id)
        path = runner.log_path(job_id)
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
        lines = [ln.rsplit("\r", 1)[-1] for ln in text.splitlines()]  # progress bars: the last redraw
        return {"text": "\n".join(lines[-tail:])}

    @app.get("/api/jobs/{job_id}/file/{path:path}")
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

    @app.get("/api/jobs/{job_id}/events")
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

    return app


def _yaml_dict(text: str) -> dict:
    try:
        data = read_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise HTTPException(
            422, [{"loc": "", "msg": f"{where}not valid YAML ({getattr(e, 'problem', e)})"}]
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HTTPException(
            422, [{"loc": "", "msg": "expected a mapping of sections (job, model, train, ...)"}]
        )
    return data
