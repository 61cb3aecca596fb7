"""The New Training Job form's server side: its panels (the training guide's, section 6) and the config fields
each shows, the UI's own defaults, and reading the YAML a page sends."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from fastapi import HTTPException

from zlora.config import read_yaml
from zlora.config.load import yaml_problem

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


def with_ui_defaults(data: dict, data_dir: Path) -> dict:
    """A private copy of ``data`` with the UI's default output folder (``<data dir>/output``)."""
    data = json.loads(json.dumps(data))
    job = data.setdefault("job", {}) if isinstance(data.get("job", {}), dict) else data["job"]
    if isinstance(job, dict):
        job.setdefault("output_dir", str(data_dir / "output"))
    return data


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
