"""The New Training Job form's server side: its panels (``ui/panels.py``, the training guide's order and words),
the form's starting values (``config/presets.new_job_defaults``), and one ``resolve`` for every config the page sends: defaults and presets filled in, validated as `zlora config
validate` does, and (``check_environment``) checked against this machine as `zlora train` would before its first
step (``train/preflight``)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import yaml
from fastapi import HTTPException

from zlora.config import dump_config, read_yaml, validate
from zlora.config.load import yaml_problem
from zlora.config.presets import new_job_defaults
from zlora.train.curves import timestep_table
from zlora.ui.panels import OPTION_LABELS, PANELS  # noqa: F401 - the app serves them from here
from zlora.utils.machine import Machine


def with_ui_defaults(data: dict, data_dir: Path) -> dict:
    """A private copy of ``data`` with the UI's default output folder (``<data dir>/output``)."""
    data = json.loads(json.dumps(data))
    job = data.setdefault("job", {}) if isinstance(data.get("job", {}), dict) else data["job"]
    if isinstance(job, dict):
        job.setdefault("output_dir", str(data_dir / "output"))
    return data


def _absent(data: dict, parts: list[str]) -> bool:
    node = data
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return True
        if not isinstance(node, dict):
            return False  # not a section: the validator names it
    return isinstance(node, dict) and parts[-1] not in node


def with_baseline(data: dict, machine: Machine) -> dict:
    """``data`` with the New Training Job form's starting values wherever it says nothing (a set field wins, also
    a field set to null)."""
    data = copy.deepcopy(data)
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    defaults = new_job_defaults(model.get("name_or_path"), machine.memory_gib)
    for path, value in defaults.items():
        parts = path.split(".")
        if parts[0] == "datasets":
            targets = [d for d in data.get("datasets") or [] if isinstance(d, dict)]
            for ds in targets:
                ds.setdefault(parts[2], copy.deepcopy(value))
        elif _absent(data, parts):
            node = data
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = copy.deepcopy(value)
    return data


def resolve(
    data: dict, data_dir: Path, machine: Machine, baseline: bool = False, check_environment: bool = False
) -> tuple[object | None, list[tuple[str, str]]]:
    """(the Config or None, [(config path, message)]): what `zlora train` would make of ``data``."""
    data = with_ui_defaults(data, data_dir)
    if baseline:
        data = with_baseline(data, machine)
    cfg, problems = validate(data)
    if cfg is not None and check_environment:
        from zlora.train.preflight import problems as environment_problems

        problems = environment_problems(cfg, machine)
    return cfg, problems


def _loc_parts(loc: str) -> list:
    """``datasets[0].folder_path`` -> ["datasets", 0, "folder_path"]."""
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\[\]]+", loc) if p]


def display_config(data: dict, data_dir: Path, machine: Machine, baseline: bool):
    """A config to show beside the problems of ``data``: every faulty setting left to its default (the form
    shows what the user typed there, with the problem), so one bad value does not blank the whole form."""
    data = with_ui_defaults(data, data_dir)
    data = with_baseline(data, machine) if baseline else data
    data.setdefault("datasets", [])
    if not data["datasets"]:  # the fields of no dataset are shown
        data["datasets"] = [{"folder_path": "."}]
    for _ in range(4):
        cfg, problems = validate(data)
        if cfg is not None:
            return cfg
        for loc, _msg in problems:
            parts = _loc_parts(loc)
            node = data
            for part in parts[:-1]:
                try:
                    node = node[part]
                except (KeyError, IndexError, TypeError):
                    node = None
                    break
            if parts and isinstance(node, dict) and parts[-1] in node:
                if parts[-1] == "folder_path":
                    node["folder_path"] = "."
                else:
                    del node[parts[-1]]
            elif not parts or parts == ["train"]:  # a rule across settings: DOP without a trigger, t range
                for key in ("diff_output_preservation", "min_timestep", "max_timestep"):
                    data.get("train", {}).pop(key, None) if isinstance(data.get("train"), dict) else None
    return None


def resolved_json(cfg, problems, shown=None, draft: dict | None = None) -> dict:
    """The page's view of a resolution: the config (or, with problems, ``shown``: the config without the
    faulty settings), its YAML (with problems: the settings as written), the noise levels, the problems."""
    view = cfg or shown
    return {
        "config": view.model_dump(mode="json") if view else None,
        "valid": cfg is not None and not problems,
        "yaml": dump_config(cfg) if cfg else yaml.safe_dump(draft or {}, sort_keys=False, allow_unicode=True),
        "timesteps": timestep_table(view.train) if view else None,
        "errors": [{"loc": loc, "msg": msg} for loc, msg in problems],
    }


def _leaves(data, prefix=()) -> list[tuple]:
    """Paths of ``data``'s settings: dict leaves; lists are one setting, except ``datasets`` (one per entry)."""
    out = []
    for k, v in data.items():
        path = (*prefix, k)
        if isinstance(v, dict):
            out += _leaves(v, path)
        elif path == ("datasets",) and isinstance(v, list):
            for i, entry in enumerate(v):
                out += _leaves(entry, (*path, i)) if isinstance(entry, dict) else []
        else:
            out.append(path)
    return out


def _prune(data: dict) -> dict:
    """Without the sections that ended up empty."""
    out = {}
    for k, v in data.items():
        v = _prune(v) if isinstance(v, dict) else v
        if v != {}:
            out[k] = v
    return out


def _without(data, path: tuple):
    data = copy.deepcopy(data)
    node = data
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return data


def user_settings(data: dict, data_dir: Path, machine: Machine, baseline: bool = False) -> dict:
    """The settings of ``data`` that its defaults would not give: a duplicated job's or an applied YAML's full
    config becomes what its author chose, so a later change of ``model.arch`` or ``network.preset`` moves every
    value that came from the old one (a value the defaults would give anyway is dropped; the rest resolves
    exactly as before)."""

    def full(d):
        cfg, problems = resolve(d, data_dir, machine, baseline)
        return cfg.model_dump(mode="json") if cfg is not None and not problems else None

    target = full(data)
    if target is None:
        return data  # invalid: kept as written, the form shows the problems
    out = copy.deepcopy(data)
    for path in _leaves(data):
        trial = _without(out, path)
        if full(trial) == target:
            out = trial
    return _prune(out)


def yaml_dict(text: str) -> dict:
    try:
        data = read_yaml(text)
    except yaml.YAMLError as e:
        raise HTTPException(422, [{"loc": "", "msg": yaml_problem(e)}]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HTTPException(
            422, [{"loc": "", "msg": "expected a mapping of sections (job, model, train, ...)"}]
        )
    return data
