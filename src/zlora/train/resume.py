"""All of resume: which checkpoint a run continues from, what may change since, and restoring its state.

A checkpoint stores the resolved config it was trained with; the same command with other settings that alter
training (LR, optimizer, data, model, ...) would otherwise train on with the old state while ``config.yaml`` claims
the new settings, so such a change is an error that names each setting, unless ``--force-resume`` asks for the new
settings from the checkpoint on (recorded in run.json). A resumed run is bit-identical to an uninterrupted one: the
weights, optimizer moments, LR schedule, data position, EMA and every generator come back."""

from __future__ import annotations

import fnmatch
import json
import logging
from pathlib import Path

import torch

from zlora.config import Config, parse_config
from zlora.errors import UserError
from zlora.runfolder import RunFolder
from zlora.train import checkpoint
from zlora.train.checkpoint import TrainState, fast_forward
from zlora.train.ema import make_ema
from zlora.utils.io import atomic_write_text

log = logging.getLogger(__name__)

# Settings that may change between a run and its resume: how long to train, what to preview and save, how
# (not what) to cache, where to run. Everything else changes what is trained.
FREE_TO_CHANGE = [
    "train.steps",
    "train.gradient_checkpointing",
    "train.cache_text_embeddings",
    "train.unload_text_encoder",
    "save.*",
    "sample.*",
    "validation.every",  # measured, not trained (validation.split is: it takes images from training)
    "validation.sigmas",
    "validation.seed",
    "validation.datasets*",
    "hub.*",
    "job.device",
    "model.low_vram",  # where the weights live, not what trains: the same LoRA either way
    "model.blocks_to_swap",
    "job.name",
    "job.output_dir",
    "datasets.*.cache_latents",
    "datasets.*.cache_dir",
]
# Changes that --force-resume cannot apply: the saved LoRA weights would not fit the new network.
NEVER = ["network.*"]


def effective(config: dict, processes: int) -> dict:
    """``config`` with ``train.batch_size`` as the global batch (batch_size x processes), under that name."""
    out = {**config, "train": dict(config.get("train", {}))}
    out["train"]["batch_size x processes"] = out["train"].pop("batch_size", 1) * processes
    return out


def flatten(data: object, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": [1, {"c": 2}]}} -> {"a.b": [1, {"c": 2}]} with lists of sections flattened by index
    ("datasets.0.folder_path"), plain lists kept whole."""
    if isinstance(data, dict):
        out: dict[str, object] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(data, list) and data and all(isinstance(x, dict) for x in data):
        out = {}
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}{i}."))
        out[f"{prefix}count"] = len(data)
        return out
    return {prefix.rstrip("."): data}


def _matches(key: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def changes(old: dict, new: dict) -> dict[str, tuple[object, object]]:
    """Settings that alter training and differ between the checkpoint's config and this one: key -> (old, new)."""
    a, b = flatten(old), flatten(new)
    return {
        k: (a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and not _matches(k, FREE_TO_CHANGE)
    }


def _show(v: object) -> str:
    return json.dumps(v) if isinstance(v, (list, dict, str)) or v is None else str(v)


def check(old: dict, new: dict, path: Path, force: bool) -> dict[str, tuple[object, object]]:
    """The changed settings (``force`` applies them), or a UserError naming each and the ways out."""
    found = changes(old, new)
    if not found:
        return found
    lines = [f"  {k}: {_show(o)} -> {_show(n)}" for k, (o, n) in found.items()]
    fixed = [k for k in found if _matches(k, NEVER)]
    if force and fixed:
        raise UserError(
            problems=[
                f"{path}: --force-resume cannot change the LoRA's shape ({', '.join(fixed)}); restore those "
                "settings, or start a new run with another job.name",
                *lines,
            ]
        )
    if not force:
        raise UserError(
            problems=[
                f"{path} was trained with other settings ({len(found)} changed):",
                *lines,
                "restore them; or start a new run (another job.name); or pass --force-resume to apply the new "
                "settings from this checkpoint on",
            ]
        )
    return found


def restore_optimizer(optimizer, lr_scheduler, state: dict, step: int, forced: dict) -> None:
    """The checkpoint's optimizer and LR schedule; after a --force-resume, the new settings from this step on:
    moments kept unless the optimizer changed, hyperparameters and the schedule (rebuilt at ``step``) new."""
    if any(k.startswith("train.optimizer") for k in forced):
        log.warning("--force-resume: new optimizer settings, so its state starts fresh")
    else:
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        optimizer.load_state_dict(state["optimizer"])
        if forced:  # the state's moments stay; lr, weight decay, betas ... are the new ones
            for group, settings in zip(optimizer.param_groups, fresh, strict=True):
                group.update(settings)
    if forced:  # the new schedule at this step (the saved one holds the old base LR)
        fast_forward(lr_scheduler, step)
    else:
        lr_scheduler.load_state_dict(state["lr_scheduler"])


def keep_old_config(run: RunFolder, new_text: str, step: int) -> None:
    """``config.yaml`` describes the current run; the one it replaces (if different) stays as ``config.<step>.yaml``
    (the step at which it stopped applying)."""
    if run.config.is_file():
        old = run.config.read_text(encoding="utf-8")
        if old != new_text:
            atomic_write_text(run.old_config(step), old)
    atomic_write_text(run.config, new_text)


def record_forced(run_json: Path, step: int, found: dict[str, tuple[object, object]]) -> None:
    """Append a forced resume to run.json's ``forced_resumes`` (kept across starts)."""
    info = json.loads(run_json.read_text(encoding="utf-8"))
    info.setdefault("forced_resumes", []).append(
        {"step": step, "changes": {k: {"old": o, "new": n} for k, (o, n) in found.items()}}
    )
    atomic_write_text(run_json, json.dumps(info, indent=2) + "\n")


def with_new_defaults(old: dict) -> dict:
    """A checkpoint's config with the settings zlora gained since at their defaults, so a new option never blocks
    the resume of a run made before it (a config this zlora cannot read stays as it is: the check names it)."""
    try:
        return parse_config(old, source="checkpoint").model_dump(mode="json")
    except UserError:
        return old


def restore(run: RunFolder, cfg: Config, world: int, force: bool, state: TrainState) -> tuple[int, dict]:
    """Continue from the newest complete checkpoint, if any: (its step, the settings --force-resume changed).
    Fills ``state`` in place (``state.ema`` may be made anew by a forced resume that turns EMA on)."""
    found = checkpoint.latest_checkpoint(run)
    if found is None:
        return 0, {}
    step, path = found
    saved = checkpoint.load_state(path)
    new = cfg.model_dump(mode="json")
    old = with_new_defaults(
        saved.get("config") or {**new, "network": saved["network"]}
    )  # older: network only
    # What must match is the global batch: 2 processes x batch 1 resume 1 process x batch 2 and back.
    old, new = effective(old, saved.get("world_size", 1)), effective(new, world)
    forced = check(old, new, path, force)
    missing = set(state.params) ^ set(saved["lora"])
    if missing:
        raise UserError(f"{path}: checkpoint LoRA does not match the model ({sorted(missing)[:3]} ...)")
    with torch.no_grad():
        for name, p in state.params.items():
            p.copy_(saved["lora"][name])
    state.sync()
    changed = lambda *prefixes: any(k.startswith(prefixes) for k in forced)  # noqa: E731
    restore_optimizer(state.optimizer, state.lr_scheduler, saved, step, forced)
    if changed("datasets", "train.batch_size", "train.seed", "job.trigger_word"):
        log.warning("--force-resume: the data changed, so the sample order starts a new epoch plan")
    else:
        state.order.load_state_dict(saved["order"])
    if state.ema is not None:
        if "ema" in saved:
            state.ema.load_state_dict(saved["ema"])
            state.ema.to(state.device)  # load_state_dict leaves the shadow weights on the CPU
        elif forced:  # EMA turned on now: from the weights as they are
            state.ema = make_ema(list(state.params.values()), cfg.train.ema_config.ema_decay)
        else:
            raise UserError(
                f"{path} was trained without EMA; set train.ema_config.use_ema=false or start anew"
            )
    if not changed("train.seed"):
        checkpoint.set_rng(saved["rng"], state.generator, state.host_generator, state.device)
    note = f"; --force-resume applies {len(forced)} changed settings" if forced else ""
    log.info("resumed from %s (step %d)%s", path, step, note)
    return step, forced
