"""ai-toolkit job files (``job: extension``, ``config: {name, process: [...]}``, ``meta``) as zlora configs.

Every setting of the trainer process is accounted for: kept (same name), mapped (another name or value: one note
line each), or named as having no zlora equivalent (one note line each). Keys this table does not know are passed
through unchanged, so the schema's "did you mean" still catches typos."""

from __future__ import annotations

from typing import Any

TRAINER_TYPES = ("diffusion_trainer", "sd_trainer", "ui_trainer")
_DTYPES = {
    "float16": "fp16",
    "fp16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "bf16": "bf16",
    "float32": "fp32",
    "fp32": "fp32",
    "float": "fp32",
}
_BIAS = {"balanced": "balanced", "content": "high_noise", "style": "low_noise"}  # ai-toolkit's cubic sampling

# ai-toolkit settings with no zlora counterpart: why, for the note.
UNSUPPORTED = {
    "process.sqlite_db_path": "the web UI keeps its own job store",
    "process.performance_log_every": "",
    "process.logging": "metrics.jsonl and loss.png are always written",
    "meta": "informational",
    "network.conv": "no conv layers in Z-Image",
    "network.conv_alpha": "no conv layers in Z-Image",
    "network.lokr_full_rank": "LoKr is not supported",
    "network.lokr_factor": "LoKr is not supported",
    "network.network_kwargs": "use network.exclude / target_blocks",
    "network.transformer_only": "always",
    "save.save_format": "the file format is chosen with `zlora lora convert`",
    "save.push_to_hub": "",
    "save.hf_repo_id": "",
    "save.hf_private": "",
    "train.noise_scheduler": "always flow matching",
    "train.train_unet": "the transformer's LoRA always trains",
    "train.train_text_encoder": "the text encoder is never trained",
    "train.switch_boundary_every": "",
    "train.bypass_guidance_embedding": "",
    "train.linear_timesteps": "",
    "train.linear_timesteps2": "",
    "train.force_first_sample": "",
    "train.weight_jitter": "",
    "train.blank_prompt_preservation": "",
    "model.low_vram": "",
    "model.layer_offloading": "not yet",
    "model.model_kwargs": "",
    "model.is_flux": "",
    "model.lora_path": "",
    "sample.sampler": "previews always use the model's own scheduler",
    "sample.num_frames": "images only",
    "sample.fps": "images only",
    "datasets.shuffle_tokens": "",
    "datasets.network_weight": "",
    "datasets.mask_path": "",
    "datasets.mask_min_value": "",
    "datasets.control_path": "",
    "datasets.controls": "",
    "datasets.num_frames": "images only",
    "datasets.shrink_video_to_frames": "",
    "datasets.do_i2v": "",
    "datasets.flip_y": "only flip_x is supported",
    "datasets.cache_latents": "",
    "datasets.cache_clip_vision_to_disk": "",
    "datasets.token_dropout_rate": "",
}


def is_aitk(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("config"), dict) and "process" in data["config"]


def import_aitk(data: dict) -> tuple[dict, list[str]]:
    """(zlora config dict, note lines) for the first trainer process of an ai-toolkit job file."""
    notes: list[str] = []
    procs = data["config"].get("process") or []
    procs = procs if isinstance(procs, list) else [procs]
    trainers = [i for i, p in enumerate(procs) if isinstance(p, dict) and p.get("type") in TRAINER_TYPES]
    for i, p in enumerate(procs):
        if i not in trainers[:1]:
            kind = p.get("type") if isinstance(p, dict) else type(p).__name__
            notes.append(
                f"config.process[{i}] (type {kind}) skipped: "
                + ("zlora runs one trainer process" if i in trainers else "not a trainer")
            )
    if not trainers:
        from zlora.errors import UserError

        raise UserError(f"the ai-toolkit job has no trainer process (type {' / '.join(TRAINER_TYPES)})")
    proc = dict(procs[trainers[0]])
    out: dict[str, Any] = {"job": {}}
    if "name" in data["config"]:
        out["job"]["name"] = data["config"]["name"]
        notes.append("config.name -> job.name")
    if "meta" in data:
        notes.append(f"meta: no zlora equivalent ({UNSUPPORTED['meta']}), ignored")
    proc.pop("type", None)
    for key, value in proc.items():
        _map_process_key(key, value, out, notes)
    return _finish(out), notes


def _unsupported(path: str, notes: list[str]) -> None:
    why = UNSUPPORTED.get(path) or UNSUPPORTED.get(f"process.{path}") or ""
    notes.append(f"{path.removeprefix('process.')}: no zlora equivalent{f' ({why})' if why else ''}, ignored")


def _map_process_key(key: str, value: Any, out: dict, notes: list[str]) -> None:
    job = out["job"]
    if key == "training_folder":
        job["output_dir"] = value
        notes.append("training_folder -> job.output_dir")
    elif key in ("device", "trigger_word"):
        job[key] = value
    elif f"process.{key}" in UNSUPPORTED:
        _unsupported(key, notes) if key == "logging" else _unsupported(f"process.{key}", notes)
    elif key == "network" and isinstance(value, dict):
        out["network"] = _section("network", value, notes)
    elif key == "save" and isinstance(value, dict):
        save = _section("save", value, notes)
        if "dtype" in save:
            save["dtype"] = _dtype(save["dtype"], "save.dtype", notes)
        out["save"] = save
    elif key == "train" and isinstance(value, dict):
        _train(value, out, notes)
    elif key == "model" and isinstance(value, dict):
        out["model"] = {**out.get("model", {}), **_section("model", value, notes)}
    elif key == "sample" and isinstance(value, dict):
        _sample(value, out, notes)
    elif key == "datasets" and isinstance(value, list):
        out["datasets"] = [_dataset(i, d, notes) if isinstance(d, dict) else d for i, d in enumerate(value)]
    else:  # unknown: the schema names it (with "did you mean")
        out[key] = value


def _section(name: str, value: dict, notes: list[str]) -> dict:
    kept = {}
    for k, v in value.items():
        if f"{name}.{k}" in UNSUPPORTED:
            _unsupported(f"{name}.{k}", notes)
        else:
            kept[k] = v
    return kept


def _dtype(value: Any, where: str, notes: list[str]) -> Any:
    new = _DTYPES.get(str(value).lower(), value)
    if new != value:
        notes.append(f"{where}: {value} -> {new}")
    return new


def _train(value: dict, out: dict, notes: list[str]) -> None:
    train = _section("train", value, notes)
    sample = out.setdefault("sample", {})
    if "gradient_accumulation_steps" in train:
        train["gradient_accumulation"] = train.pop("gradient_accumulation_steps")
        notes.append("train.gradient_accumulation_steps -> train.gradient_accumulation")
    if "dtype" in train:
        out.setdefault("model", {})["dtype"] = _dtype(train.pop("dtype"), "train.dtype", notes)
        notes.append("train.dtype -> model.dtype")
    if "optimizer" in train and isinstance(train["optimizer"], str):
        train["optimizer"] = train["optimizer"].lower()
    params = train.get("optimizer_params")
    if isinstance(params, dict) and "weight_decay" in params:
        params = dict(params)
        train["weight_decay"] = params.pop("weight_decay")
        train["optimizer_params"] = params
        notes.append("train.optimizer_params.weight_decay -> train.weight_decay")
    if "content_or_style" in train:
        style = train.pop("content_or_style")
        train["timestep_bias"] = _BIAS.get(style, style)
        notes.append(f"train.content_or_style: {style} -> train.timestep_bias: {train['timestep_bias']}")
    if "skip_first_sample" in train:
        sample["skip_first_sample"] = train.pop("skip_first_sample")
        notes.append("train.skip_first_sample -> sample.skip_first_sample")
    if train.pop("disable_sampling", False):
        out["_disable_sampling"] = True
        notes.append("train.disable_sampling: true -> sample.prompts: [] (no previews)")
    out["train"] = train


def _sample(value: dict, out: dict, notes: list[str]) -> None:
    sample = {**out.get("sample", {}), **_section("sample", value, notes)}
    samples = sample.pop("samples", None)
    if samples is not None:
        prompts = []
        for s in samples:
            if isinstance(s, dict):
                extra = {k: s[k] for k in ("width", "height", "seed", "neg") if k in s}
                prompts.append({"prompt": s.get("prompt", ""), **extra} if extra else s.get("prompt", ""))
                for k in set(s) - {"prompt", "width", "height", "seed", "neg"}:
                    notes.append(f"sample.samples[].{k}: no zlora equivalent, ignored")
            else:
                prompts.append(s)
        sample["prompts"] = prompts
        notes.append("sample.samples[].prompt -> sample.prompts")
    out["sample"] = sample


def _dataset(i: int, value: dict, notes: list[str]) -> dict:
    ds = {}
    for k, v in value.items():
        if k == "cache_latents_to_disk":
            ds["cache_latents"] = bool(v) or ds.get("cache_latents", False)
            notes.append(f"datasets[{i}].cache_latents_to_disk -> datasets[{i}].cache_latents")
        elif k == "cache_latents":  # ai-toolkit: in memory; zlora caches on disk, which covers it
            ds["cache_latents"] = bool(v) or ds.get("cache_latents", False)
            notes.append(f"datasets[{i}].cache_latents (in memory) -> datasets[{i}].cache_latents (on disk)")
        elif f"datasets.{k}" in UNSUPPORTED:
            why = UNSUPPORTED[f"datasets.{k}"]
            notes.append(f"datasets[{i}].{k}: no zlora equivalent{f' ({why})' if why else ''}, ignored")
        else:
            ds[k] = v
    return ds


def _finish(out: dict) -> dict:
    """Settings that depend on others once all are mapped."""
    if out.pop("_disable_sampling", False):
        out.setdefault("sample", {})["prompts"] = []
    return {k: v for k, v in out.items() if v != {} or k == "job"}
