"""The New Training Job form's panels in the training guide's order and words (section 6; labels and option names
as ai-toolkit's form writes them). Every config setting is on one of them (a test checks it)."""

from __future__ import annotations

from zlora.config.optimizers import OPTIMIZERS


def _panel(pid: str, title: str, fields: dict[str, str], more: dict[str, str] | None = None, **extra) -> dict:
    """A panel: its fields (config path -> label) and the rest of its settings in a "More settings" fold."""
    as_list = lambda d: [  # noqa: E731
        {"path": p, "label": label, **({"only": ONLY[p]} if p in ONLY else {})}
        for p, label in (d or {}).items()
    ]
    return {"id": pid, "title": title, "fields": as_list(fields), "more": as_list(more), **extra}


# Fields shown only while another setting has one value: path -> (that setting, the value).
ONLY = {"network.lokr_factor": ("network.type", "lokr"), "network.lokr_full_rank": ("network.type", "lokr")}

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
            "network.lokr_factor": "LoKr Factor",
            "network.lokr_full_rank": "LoKr Full Rank",
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
            "train.snr_gamma": "Min-SNR Gamma",
            "train.anchor_steps": "Anchor Steps",
            "train.anchor_jitter": "Anchor Jitter",
            "train.anchor_mix": "Anchor Mix (uniform share)",
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
            "mask_path": "Mask Folder",
            "alpha_mask": "Alpha Mask",
            "mask_min_value": "Mask Min Value",
            "invert_mask": "Invert Mask",
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
            "validation.every": "Validation Every (steps)",
            "validation.sigmas": "Validation Noise Levels",
            "validation.split": "Validation Split (share held out)",
            "validation.seed": "Validation Seed",
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
    "network.type": {"lora": "LoRA", "lokr": "LoKr", "loha": "LoHa", "dora": "DoRA"},
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
        "turbo_anchors": "Turbo Anchors (the sampler's sigmas)",
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
