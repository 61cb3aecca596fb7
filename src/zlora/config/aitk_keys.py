"""The ai-toolkit settings `config/aitk.py` knows, as tables: the ones zlora reads under the same (or another)
name, the ones with no zlora counterpart (and why), and ai-toolkit's optimizer and quantization names.

The keys come from ai-toolkit's config classes (``toolkit/config_modules.py``: SaveConfig, SampleConfig,
NetworkConfig, TrainConfig, ModelConfig, DatasetConfig, LoggingConfig), from the job its UI exports
(``ui/src/app/jobs/new/jobConfig.ts``) and from the Z-Image architecture's UI defaults (``options.ts``). Last,
``aitk_schedule``: ai-toolkit's LR schedules in zlora's terms. Keys whose mapping needs code (alpha, optimizers,
timesteps) are methods of ``aitk._Import``."""

from __future__ import annotations

from typing import Any

from zlora.errors import UserError

# LoKr's keys: ai-toolkit's form writes them into every job, LoRA ones too; kept for network.type lokr only
LOKR = ("network.lokr_full_rank", "network.lokr_factor")
# ai-toolkit's dtype names -> zlora's
DTYPES = {"float16": "fp16", "fp16": "fp16", "half": "fp16", "bfloat16": "bf16", "bf16": "bf16", "float32": "fp32",
          "fp32": "fp32", "float": "fp32"}  # fmt: skip

# ai-toolkit path -> zlora path (None: the same path)
SAME: dict[str, str | None] = {
    **{f"save.{k}": None for k in ("save_every", "max_step_saves_to_keep")},
    **{f"train.{k}": None for k in (
        "steps", "batch_size", "lr", "gradient_accumulation", "gradient_checkpointing", "max_grad_norm", "ema_config",
        "unload_text_encoder", "cache_text_embeddings", "diff_output_preservation",
        "diff_output_preservation_multiplier", "diff_output_preservation_class", "do_differential_guidance",
        "differential_guidance_scale", "seed", "timestep_shift", "lr_warmup_steps", "timestep_bias_exponent",
        "snr_gamma",
    )},
    "train.min_snr_gamma": "train.snr_gamma",
    **{f"model.{k}": None for k in (
        "name_or_path", "arch", "assistant_lora_path", "quantize", "quantize_te", "low_vram",
    )},
    **{f"sample.{k}": None for k in (
        "sample_every", "width", "height", "neg", "seed", "walk_seed", "guidance_scale", "sample_steps",
        "network_multiplier", "prompts",
    )},
}  # fmt: skip

# ai-toolkit path -> why zlora has no equivalent ("" when the name says it)
NONE: dict[str, str] = {
    "process.sqlite_db_path": "the web UI keeps its own job store",
    "process.performance_log_every": "",
    "process.logging": "metrics.jsonl and loss.png are always written",
    "process.monitoring": "the web UI shows memory and speed",
    "process.first_sample": "the step-0 preview uses sample",
    "process.embedding": "textual-inversion embeddings are not trained",
    "process.adapter": "T2I / IP adapters are not trained",
    "process.slider": "concept sliders are not trained",
    "network.conv": "no conv layers in Z-Image",
    "network.conv_alpha": "no conv layers in Z-Image",
    "network.transformer_only": "always",
    "network.normalize": "",
    "network.lorm": "",
    "save.save_format": "zlora writes its own format; `zlora lora convert` writes others",
    "save.push_to_hub": "",
    "save.hf_repo_id": "",
    "save.hf_private": "",
    "train.noise_scheduler": "always flow matching",
    "train.train_unet": "the transformer's LoRA always trains",
    "train.train_text_encoder": "the text encoder is never trained",
    "train.switch_boundary_every": "one transformer",
    "train.bypass_guidance_embedding": "Z-Image has no guidance embedding",
    "train.linear_timesteps": "use timestep_type",
    "train.linear_timesteps2": "use timestep_type",
    "train.force_first_sample": "zlora previews step 0 unless skip_first_sample",
    "train.weight_jitter": "",
    "train.blank_prompt_preservation": "use a regularisation dataset (is_reg, prior_reg) or DOP",
    "train.blank_prompt_preservation_multiplier": "",
    "train.auto_scale_batch_size": "",
    "train.noise_offset": "",
    "train.xformers": "",
    "train.sdp": "",
    "train.unet_lr": "one learning rate: train.lr",
    "train.text_encoder_lr": "the text encoder is never trained",
    "train.embedding_lr": "",
    "train.adapter_lr": "",
    "train.start_step": "zlora resumes from its checkpoints",
    "train.free_u": "",
    "train.noise_multiplier": "",
    "train.img_multiplier": "",
    "train.short_and_long_captions": "",
    "train.single_item_batching": "",
    "train.loss_target": "the target is always x0 - noise",
    "train.inverted_mask_prior": "the masked-out part is not trained towards the base model (use prior_reg)",
    "train.inverted_mask_prior_multiplier": "the masked-out part is not trained towards the base model",
    "train.do_prior_divergence": "",
    "model.model_kwargs": "",
    "model.extras_name_or_path": "zlora reads the text encoder and VAE from name_or_path's own folder",
    "model.is_flux": "",
    "model.is_xl": "",
    "model.is_v2": "",
    "model.lora_path": "",
    "model.inference_lora_path": "",
    "model.text_encoder_path": "",
    "model.vae_path": "",
    "model.quantize_kwargs": "",
    "model.accuracy_recovery_adapter": "",
    "model.block_compile": "train.compile compiles the blocks",
    "model.compile_mode": "",
    "model.split_model_over_gpus": "data-parallel only",
    "model.low_vram_layer_streaming": "model.blocks_to_swap streams the swapped blocks ahead of use",
    "sample.sampler": "previews use the model's own scheduler",
    "sample.num_frames": "images only",
    "sample.fps": "images only",
    "sample.format": "previews are PNG",
    "sample.ext": "previews are PNG",
    "sample.guidance_rescale": "",
    "sample.refiner_start_at": "",
    "sample.adapter_conditioning_scale": "",
    "sample.extra_values": "",
    "sample.sample_start_step": "zlora previews at step 0 and every sample_every steps",
}

# datasets[].key -> why zlora has no equivalent
DATASET_NONE: dict[str, str] = {
    "control_path": "no control images", "controls": "no control images", "multi_control_paths": "",
    "network_weight": "", "num_frames": "images only",
    "shrink_video_to_frames": "images only", "do_i2v": "images only", "fps": "images only",
    "flip_y": "only flip_x is supported", "token_dropout_rate": "", "shuffle_tokens": "", "random_triggers": "",
    "keep_tokens": "", "augments": "", "augmentations": "", "buckets": "aspect buckets are always on",
    "bucket_tolerance": "", "random_crop": "", "random_scale": "", "scale": "", "poi": "", "type": "",
    "dataset_path": "use folder_path", "cache_clip_vision_to_disk": "", "square_crop": "",
}  # fmt: skip

# ai-toolkit's optimizer names (toolkit/optimizer.py; its UI's choices) -> (zlora's, what differs)
OPTIMIZERS: dict[str, tuple[str, str]] = {
    "adamw": ("adamw", ""),
    "adamw8bit": ("adamw8bit", ""),
    "adamw8": ("adamw8bit", "ai-toolkit's own 8-bit AdamW; bitsandbytes' here"),
    "adamw_fused": ("adamw", ""),
    "adamw_bf16": ("adamw", "fp32 states here"),
    "adamw_fp8": ("adamw", "fp32 states here"),
    "adam": ("adam", ""),
    "adam8": ("adam8bit", "ai-toolkit's own 8-bit Adam; bitsandbytes' Adam8bit here"),
    "adam8bit": ("adam8bit", ""),
    "ademamix8bit": ("ademamix8bit", ""),
    "lion": ("lion", ""),
    "lion8bit": ("lion8bit", ""),
    "prodigy": ("prodigy", ""),
    "prodigyopt": ("prodigy", ""),
    "prodigy8bit": (
        "prodigy8bit",
        "prodigyopt's step with states in bitsandbytes' 8-bit format (ai-toolkit: its own)",
    ),
    "adafactor": ("adafactor", ""),
    "automagic": ("automagic", ""),
    "automagic2": ("automagic", "zlora implements Automagic (v1); ai-toolkit's v2 is closest to it"),
    "automagic3": ("automagic", "zlora implements Automagic (v1); ai-toolkit's v3 is closest to it"),
    "adagrad": ("adagrad", ""),
    "dadaptation": ("prodigy", "zlora has no D-Adaptation: Prodigy, its successor, is the closest"),
    "dadaptationadam": ("prodigy", "zlora has no D-Adaptation: Prodigy, its successor, is the closest"),
    "dadaptationlion": ("prodigy", "zlora has no D-Adaptation: Prodigy, its successor, is the closest"),
}

# ai-toolkit's quantization names -> zlora's (float8 or int8 weight-only)
QTYPES = {"qfloat8": "float8", "float8": "float8", "qint8": "int8", "uint8": "int8", "int8": "int8",
          **{f"uint{n}": "int8" for n in range(2, 8)}, "": "none"}  # fmt: skip


def aitk_schedule(name: str, params: dict, steps: int, lr: float) -> tuple[dict[str, Any], list[str]]:
    """ai-toolkit's schedule ``name`` (toolkit/scheduler.py, with the one param it injects: total_iters = steps)
    as zlora's train settings, and the note lines saying what differs."""
    notes: list[str] = []
    total = params.pop("total_iters", None)  # ai-toolkit overwrites it with train.steps anyway
    warmup = params.pop("num_warmup_steps", None)
    mapped: dict[str, Any]
    if name == "constant":
        factor = float(params.pop("factor", 1.0))
        mapped = {"lr_scheduler": "constant"}
        if factor != 1.0:
            mapped["lr"] = lr * factor
            notes.append(
                f"train.lr_scheduler_params.factor {factor}: ConstantLR over the run -> lr x {factor}"
            )
    elif name == "constant_with_warmup":
        mapped = {
            "lr_scheduler": "constant_with_warmup",
            "lr_warmup_steps": int(warmup if warmup is not None else 1000),
        }
        if warmup is None:
            notes.append(
                "train.lr_scheduler: constant_with_warmup -> lr_warmup_steps 1000 (ai-toolkit's default)"
            )
    elif name == "linear":
        ramp = {k: params.pop(k) for k in ("start_factor", "end_factor") if k in params}
        mapped = {"lr_scheduler": "linear_ramp", "lr_scheduler_params": ramp}
        notes.append(
            "train.lr_scheduler: linear -> linear_ramp (ai-toolkit's linear is torch's LinearLR: "
            f"lr x {ramp.get('start_factor', '1/3')} rising to lr x {ramp.get('end_factor', 1)} over "
            f"the {steps} steps)"
        )
    elif name == "cosine":
        cos = {"eta_min": float(params.pop("eta_min", 0.0))}
        decay = params.pop("cosine_decay_steps", None)
        cos["cosine_decay_steps"] = int(min(decay, steps) if decay is not None else steps)
        mapped = {
            "lr_scheduler": "cosine",
            "lr_warmup_steps": int(warmup or 0),
            "lr_scheduler_params": cos,
        }
        notes.append(
            f"train.lr_scheduler: cosine -> cosine with eta_min {cos['eta_min']} descending over "
            f"{cos['cosine_decay_steps']} steps after {int(warmup or 0)} warm-up steps (ai-toolkit's)"
        )
    elif name == "cosine_with_restarts":
        eta = float(params.pop("eta_min", 0.0))
        dropped = [k for k in ("T_0", "T_mult") if params.pop(k, None) is not None]
        mapped = {
            "lr_scheduler": "cosine",
            "lr_scheduler_params": {"eta_min": eta, "cosine_decay_steps": steps},
        }
        notes.append(
            "train.lr_scheduler: cosine_with_restarts -> one cosine to eta_min over the run (ai-toolkit"
            f" sets T_0 = total_iters = steps{', replacing ' + '/'.join(dropped) if dropped else ''})"
        )
    elif name == "step":
        mapped = {
            "lr_scheduler": "step",
            "lr_scheduler_params": {k: params.pop(k) for k in ("step_size", "gamma") if k in params},
        }
        notes.append(
            "train.lr_scheduler: step -> step (note: ai-toolkit itself fails with it: it passes "
            "total_iters to torch's StepLR)"
        )
    else:
        raise UserError(
            f"`train.lr_scheduler` {name}: ai-toolkit runs cosine, cosine_with_restarts, step, linear, "
            "constant and constant_with_warmup; use one of those"
        )
    for k in sorted(params):
        notes.append(
            f"train.lr_scheduler_params.{k}: no zlora equivalent ({name} takes no {k} in ai-toolkit), ignored"
        )
    if total is not None and total != steps:
        notes.append(
            f"train.lr_scheduler_params.total_iters {total}: ai-toolkit replaces it with train.steps "
            f"({steps})"
        )
    return mapped, notes


OFFLOADING = (
    "model.layer_offloading",
    "model.layer_offloading_transformer_percent",
    "model.layer_offloading_text_encoder_percent",
)


def aitk_offloading(seen: dict, low_vram: bool | None) -> dict[str, tuple[object, str | None]]:
    """ai-toolkit's layer offloading: a fraction of the transformer (its UI's default 100%) and of the text encoder
    off the GPU. zlora swaps whole main blocks: the fraction of Z-Image's 30 is ``model.blocks_to_swap``; a
    text-encoder share puts the encoder on the CPU (``model.low_vram``). -> {zlora path: (value, note)}."""
    if not seen.get("model.layer_offloading"):
        return {}
    pct = seen.get("model.layer_offloading_transformer_percent", 1.0)
    if not isinstance(pct, (int, float)) or not 0 <= pct <= 1:
        raise UserError(
            f"model.layer_offloading_transformer_percent: {pct!r} must be a fraction 0-1, e.g. 0.5"
        )
    n = round(pct * 30)
    out = {
        "model.blocks_to_swap": (
            n,
            f"model.layer_offloading_transformer_percent {pct} -> model.blocks_to_swap {n} (of 30 blocks)",
        )
    }
    te = seen.get("model.layer_offloading_text_encoder_percent", 1.0)
    if isinstance(te, (int, float)) and te > 0 and not low_vram:
        note = (
            "model.layer_offloading_text_encoder_percent > 0 -> model.low_vram (the text encoder on the CPU)"
        )
        out["model.low_vram"] = (True, note)
    return out
