"""Everything `zlora train` would refuse before its first step that the config alone cannot say: dataset folders
and their images, the run folder, the base model and the training adapter on disk (or fetchable), the device and
whether the optimizer runs on it. One function for both callers: the trainer runs it first (``check``), the web
form at every edit (``problems``, per field), so Create never queues a job that fails at start-up.

Torch-free and download-free: the machine's facts come in as a ``Machine``; models are only looked up."""

from __future__ import annotations

import re

from zlora.config.load import check_paths
from zlora.config.optimizers import problem as optimizer_problem
from zlora.config.schema import Config
from zlora.data.files import list_images
from zlora.errors import UserError
from zlora.hub.manifest import hub_settings
from zlora.hub.refs import file_of, model_folder_of
from zlora.runfolder import RunFolder
from zlora.train.runlock import check_run_folder
from zlora.utils.machine import Machine

_LOC = re.compile(r"`((?:job|model|train|datasets|sample|save|network|hub)[\w.\[\]]*)`")


def _loc(message: str, default: str) -> str:
    """The config path a message names first (``datasets[0].folder_path``), else ``default``."""
    m = _LOC.search(message)
    return m.group(1) if m else default


def device_problem(device: str, machine: Machine) -> str | None:
    if not machine.known or device in ("auto", "cpu"):
        return None
    if device == "mps":
        return (
            None
            if machine.mps
            else "`job.device` is 'mps' but this machine has no Apple GPU; use cpu or auto"
        )
    if not machine.cuda:
        return f"`job.device` is {device!r} but this machine has no CUDA device; use cpu or auto"
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= len(machine.cuda):
        return f"`job.device` is {device!r} but this machine has {len(machine.cuda)} CUDA device(s)"
    return None


def problems(cfg: Config, machine: Machine) -> list[tuple[str, str]]:
    """(config path, message) for each thing a run of ``cfg`` on ``machine`` would fail on before training."""
    found: list[tuple[str, str]] = []

    def attempt(default_loc: str, fn) -> None:
        try:
            fn()
        except UserError as e:
            found.extend((_loc(p, default_loc), p) for p in e.problems)

    why = device_problem(cfg.job.device, machine)
    if why:
        found.append(("job.device", why))
    if machine.known:
        why = optimizer_problem(cfg.train.optimizer, Machine.installed)
        if why:
            found.append(("train.optimizer", why))
    before = len(found)
    attempt("datasets", lambda: check_paths(cfg))
    if len(found) == before:  # every folder exists: each must hold images
        for i, ds in enumerate(cfg.datasets):
            attempt(f"datasets[{i}].folder_path", lambda ds=ds, i=i: list_images(ds, i))
    attempt("job.name", lambda: check_run_folder(RunFolder.of(cfg.job.output_dir, cfg.job.name)))
    hub = hub_settings(cfg.hub.models_dir, cfg.hub.endpoint, cfg.hub.offline)
    ref = cfg.model.name_or_path
    if not ref.startswith("builtin:"):
        attempt("model.name_or_path", lambda: model_folder_of(ref, hub, fetch=False))
    adapter = cfg.model.assistant_lora_path
    if adapter:
        attempt(
            "model.assistant_lora_path",
            lambda: file_of(adapter, "model.assistant_lora_path", hub, fetch=False),
        )
    return found


def check(cfg: Config, machine: Machine) -> None:
    """The trainer's first step: every problem at once, one line each."""
    found = problems(cfg, machine)
    if found:
        raise UserError(problems=[msg for _, msg in found])
