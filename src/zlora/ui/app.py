"""The web UI's ASGI app: the factory (auth, pages, schema and config routes) and the routers of each page's API
(jobs, datasets, LoRA tools, models and generate tasks). Configs go through the same schema and messages as
`zlora config validate`, training runs through the runner (`zlora train` in a child process), files come only from
the run folders of the UI's jobs. Torch is never imported here, so the server starts in well under a second of our
own time."""

from __future__ import annotations

import contextlib
import hmac
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from zlora import __version__, vocab
from zlora.config.presets import ARCH_PRESETS, TURBO_ADAPTERS, sampling_defaults
from zlora.config.schema import Config
from zlora.errors import UserError
from zlora.lora.codecs import CODECS
from zlora.ui import datasets, form, jobs, loratools, tasks
from zlora.ui.runner import Runner
from zlora.ui.store import JobStore
from zlora.utils.machine import Machine, Probe

STATIC = Path(__file__).parent / "static"
TOKEN_COOKIE = "zlora_token"


class ConfigBody(BaseModel):
    config: dict[str, Any] = Field(default_factory=dict, description="a (partial) config as nested sections")
    baseline: bool = Field(
        False,
        description="fill what the config leaves unset with the New Training Job form's starting values",
    )
    check_environment: bool = Field(
        False,
        description="also check what `zlora train` checks before its first step (folders, model, device)",
    )


class YamlBody(BaseModel):
    yaml: str = Field(description="config YAML")
    baseline: bool = Field(False, description="as in /api/config/resolve")


UNSAFE = ("POST", "PUT", "PATCH", "DELETE")


def host_name(header: str) -> str:
    """``127.0.0.1:8675`` -> ``127.0.0.1``; ``[::1]:8675`` -> ``[::1]``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def foreign_request(request: Request, hosts: set[str] | None) -> str | None:
    """Why a request must be refused as coming from another site, or None. A DNS-rebinding page reaches the
    server under its own name (Host); a cross-site form or fetch carries its page's Origin / Sec-Fetch-Site."""
    host = request.headers.get("host", "")
    if hosts is not None and host_name(host) not in hosts:
        return (
            f"Host {host!r} is not a name of this server; open it as http://127.0.0.1:<port>/ or start it with "
            f"--allowed-host {host_name(host) or 'NAME'}"
        )
    if request.method in UNSAFE:
        site = request.headers.get("sec-fetch-site")
        origin = request.headers.get("origin")
        if site in ("cross-site", "same-site"):
            return f"refused: a {site} request (from another page than this UI's)"
        if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != host.lower()):
            return f"refused: a request from {origin}, not from this UI's pages"
    return None


def create_app(
    data_dir: Path,
    token: str | None = None,
    start_runner: bool = True,
    max_upload_mb: int = 50,
    hosts: set[str] | None = None,
    machine: Machine | None = None,
) -> FastAPI:
    """``hosts``: the names a Host header may carry (None: any, for a wildcard address or in-process tests).
    ``machine``: what this machine can run (default: asked of a child process once, in the background)."""
    probe = None if machine is not None else Probe.shared()
    here = (lambda: machine) if machine is not None else probe.get
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(data_dir / "zlora.db")
    runner = Runner(store, data_dir)
    queue = tasks.Tasks(data_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_runner:
            runner.start()
            queue.run()
        yield
        runner.shutdown()
        queue.shutdown()

    app = FastAPI(
        title="zlora",
        version=__version__,
        lifespan=lifespan,
        description="Train Z-Image LoRAs: jobs, progress, samples.",
    )
    app.state.store, app.state.runner, app.state.data_dir, app.state.machine = store, runner, data_dir, here

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

    @app.middleware("http")  # added last, so it runs first: before the token, before any route
    async def _same_site(request: Request, call_next):
        why = foreign_request(request, hosts)
        if why:
            return JSONResponse({"detail": why}, 403)
        return await call_next(request)

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
    app.include_router(tasks.router(data_dir, store, queue))

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
            "panels": form.PANELS,
            "option_labels": form.OPTION_LABELS,
            "arch_presets": ARCH_PRESETS,
            "adapters": TURBO_ADAPTERS,
            "default_output_dir": str(data_dir / "output"),
            "builtin_sampling": {m: sampling_defaults(m) for m in ("builtin:shapes", "builtin:tiny")},
            "vocab": vocab.as_json(),
            "lora_formats": [{"name": c.name, "label": c.label} for c in CODECS.values() if c.offered],
        }

    @app.post("/api/config/resolve")
    def resolve(body: ConfigBody) -> dict:
        """The config with every default and arch preset filled in (and the noise levels it trains at, as
        `zlora config timesteps` prints them), or the per-field problems."""
        cfg, problems = form.resolve(body.config, data_dir, here(), body.baseline, body.check_environment)
        shown = None if cfg else form.display_config(body.config, data_dir, here(), body.baseline)
        return form.resolved_json(cfg, problems, shown, body.config)

    @app.post("/api/config/parse")
    def parse_yaml(body: YamlBody) -> dict:
        """The settings of a YAML its defaults would not give (see ``form.user_settings``): what the form keeps
        as the user's choices, so values that came from ``model.arch`` or a preset follow a later change."""
        return {"config": form.user_settings(form.yaml_dict(body.yaml), data_dir, here(), body.baseline)}

    @app.get("/api/machine")
    def machine_facts() -> dict:
        """What this machine can run (CUDA devices and their memory), as the form's defaults use it."""
        return here().as_json()

    app.include_router(jobs.router(data_dir, store, runner, here))

    return app
