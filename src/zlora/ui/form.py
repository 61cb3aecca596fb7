"""The New Training Job form's server side: its panels in the training guide's order and words (section 6; labels
and option names as ai-toolkit's form writes them), the form's starting values (``config/presets.new_job_defaults``),
and one ``resolve`` for every config the page sends: defaults and presets filled in, validated as `zlora config
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
from zlora.config.optimizers import OPTIMIZERS
from zlora.config.presets import new_job_defaults
from zlora.train.curves import timestep_table
from zlora.utils.machine import Machine


def _panel(pid: str, title: str, fields: dict[str, str], more: dict[str, str] | None = None, **extra) -> dict:
    """A panel: its fields (config path -> label) and the rest of its settings in a "More settings" fold."""
    as_list = lambda d: [{"path": p, "label": label} for p, label in (d or {}).items()]  # noqa: E731
    return {"id": pid, "title": title, "fields": as_list(fields), "more": as_list(more), **extra}


# The guide's panels (training guide, section 6). Every config setting is on one of them (a test checks it);
# dataset fields are relative to each entry of `datasets`.
PANELS = [
    _panel(
        "job",
        "Job",
        {"job.name": "Training Name", "job.trigger_word": "Trigger Word", "job.device": "GPU ID / Device"},
        {"job.output_dir": "Training Folder"},
    ),
    _panel(
        "model",
        "Model",
        {
            "model.arch": "Model Architecture",
            "model.name_or_path": "Name or Path",
            "model.assistant_lora_path": "Training Adapter Path",
            "model.low_vram": "Low VRAM",
            "model.blocks_to_swap": "Layer Offloading (blocks to swap)",
        },
        {
            "model.dtype": "Data Type",
            "hub.models_dir": "Models Folder",
            "hub.endpoint": "Hub Endpoint (mirror)",
            "hub.offline": "Offline",
        },
    ),
    _panel(
        "quantization",
        "Quantization",
        {
            "model.quantize": "Quantize Transformer",
            "model.qtype": "Transformer",
            "model.quantize_te": "Quantize Text Encoder",
            "model.qtype_te": "Text Encoder",
        },
    ),
    _panel(
        "target",
        "Target",
        {
            "network.type": "Target Type",
            "network.linear": "Linear Rank",
            "network.linear_alpha": "Linear Alpha",
        },
        {
            "network.preset": "Target Modules Preset",
            "network.target_modules": "Target Modules",
            "network.target_blocks": "Target Blocks",
            "network.exclude": "Exclude (regular expressions)",
            "network.dropout": "Dropout",
        },
    ),
    _panel(
        "save",
        "Save",
        {
            "save.dtype": "Data Type",
            "save.save_every": "Save Every",
            "save.max_step_saves_to_keep": "Max Step Saves to Keep",
        },
    ),
    _panel(
        "training",
        "Training",
        {
            "train.batch_size": "Batch Size",
            "train.gradient_accumulation": "Gradient Accumulation",
            "train.steps": "Steps",
            "train.optimizer": "Optimizer",
            "train.lr": "Learning Rate",
            "train.weight_decay": "Weight Decay",
            "train.timestep_type": "Timestep Type",
            "train.timestep_bias": "Timestep Bias",
            "train.loss_type": "Loss Type",
            "train.ema_config.use_ema": "Use EMA",
            "train.ema_config.ema_decay": "EMA Decay",
            "train.unload_text_encoder": "Unload TE",
            "train.cache_text_embeddings": "Cache Text Embeddings",
            "train.diff_output_preservation": "Differential Output Preservation",
            "train.diff_output_preservation_multiplier": "DOP Loss Multiplier",
            "train.diff_output_preservation_class": "DOP Preservation Class",
        },
        {
            "train.lr_scheduler": "LR Scheduler",
            "train.lr_warmup_steps": "Warm-up Steps",
            "train.lr_scheduler_params": "LR Scheduler Params",
            "train.optimizer_params": "Optimizer Params",
            "train.max_grad_norm": "Max Grad Norm",
            "train.timestep_shift": "Timestep Shift",
            "train.timestep_bias_exponent": "Timestep Bias Exponent",
            "train.min_timestep": "Min Timestep",
            "train.max_timestep": "Max Timestep",
            "train.huber_delta": "Huber Delta",
            "train.seed": "Seed",
            "train.gradient_checkpointing": "Gradient Checkpointing",
            "train.lora_precision": "LoRA Precision",
            "train.compile": "Compile",
        },
    ),
    _panel(
        "datasets",
        "Datasets",
        {
            "folder_path": "Dataset",
            "default_caption": "Default Caption",
            "caption_dropout_rate": "Caption Dropout Rate",
            "cache_latents": "Cache Latents",
            "is_reg": "Is Regularization",
            "flip_x": "Flip X",
            "resolution": "Resolutions",
        },
        {
            "num_repeats": "Num Repeats",
            "caption_ext": "Caption Extension",
            "trigger_word": "Trigger Word (this dataset)",
            "add_trigger_word": "Add Trigger Word",
            "include_subfolders": "Include Subfolders",
            "prior_reg": "Prior Regularization",
            "cache_dir": "Cache Folder",
        },
        list="datasets",
    ),
    _panel(
        "sample",
        "Sample",
        {
            "sample.sample_every": "Sample Every",
            "sample.sample_steps": "Sample Steps",
            "sample.guidance_scale": "Guidance Scale",
            "sample.width": "Width",
            "sample.height": "Height",
            "sample.seed": "Seed",
            "sample.walk_seed": "Walk Seed",
            "sample.prompts": "Prompts",
        },
        {
            "sample.neg": "Negative Prompt",
            "sample.skip_first_sample": "Skip First Sample",
            "sample.samples_per_prompt": "Samples per Prompt",
            "sample.network_multiplier": "LoRA Weight in Previews",
        },
    ),
    _panel(
        "advanced",
        "Advanced",
        {
            "train.do_differential_guidance": "Do Differential Guidance",
            "train.differential_guidance_scale": "Differential Guidance Scale",
        },
    ),
]

_DTYPES = {"auto": "Auto (BF16 on a GPU, FP32 on CPU)", "bf16": "BF16", "fp16": "FP16", "fp32": "FP32"}
_QTYPES = {"float8": "float8", "qfloat8": "qfloat8 (= float8)", "int8": "int8", "none": "none"}
# config path -> {value: the name the guide / ai-toolkit's form shows}
OPTION_LABELS = {
    "model.arch": {
        "zimage:turbo": "Z-Image Turbo (w/ Training Adapter)",
        "zimage:deturbo": "Z-Image De-Turbo (De-Distilled)",
        "zimage": "Z-Image (Base)",
    },
    "model.dtype": _DTYPES,
    "save.dtype": _DTYPES,
    "model.qtype": _QTYPES,
    "model.qtype_te": _QTYPES,
    "network.type": {"lora": "LoRA"},
    "network.preset": {
        "attn": "Attention",
        "attn_ff": "Attention + Feed-forward",
        "attn_ff_adaln": "Attention + Feed-forward + adaLN",
    },
    "train.optimizer": {name: o.label for name, o in OPTIMIZERS.items()},
    "train.timestep_type": {
        "sigmoid": "Sigmoid",
        "linear": "Linear",
        "shift": "Shift",
        "weighted": "Weighted",
        "mid_weighted": "Mid-weighted (6s(1-s))",
    },
    "train.timestep_bias": {"balanced": "Balanced", "high_noise": "High Noise", "low_noise": "Low Noise"},
    "train.loss_type": {"mse": "Mean Squared Error", "mae": "Mean Absolute Error", "huber": "Huber"},
    "train.lr_scheduler": {
        "constant": "Constant",
        "constant_with_warmup": "Constant with Warm-up",
        "linear": "Linear (to 0)",
        "linear_ramp": "Linear Ramp (ai-toolkit's linear)",
        "cosine": "Cosine",
        "cosine_with_restarts": "Cosine with Restarts",
        "polynomial": "Polynomial",
        "step": "Step",
    },
    "train.compile": {"auto": "Auto (on for CUDA)", "true": "On", "false": "Off"},
    "train.lora_precision": {"auto": "Auto", "fp32": "FP32"},
}


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
    defaults = new_job_defaults(model.get("name_or_path"), bool(machine.cuda), machine.memory_gib)
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
