"""The typed config tree. Defaults live here and only here; section and field names follow ai-toolkit's where
the meaning is the same. Unknown keys are rejected (see ``load.py`` for the messages)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from zlora.config.base import DEVICE_PATTERN, MAX_BATCH, MAX_SAMPLE_STEPS, MAX_STEPS, Section, plain_path
from zlora.config.dataset import DatasetConfig, ValidationConfig
from zlora.config.network import LoraNetworkConfig, NetworkConfig
from zlora.config.optimizers import ALIASES as OPTIMIZER_ALIASES
from zlora.config.optimizers import params_problem
from zlora.config.presets import ARCH_PRESETS, TURBO_ADAPTERS


class JobConfig(Section):
    name: str = "my_lora"
    """Run name: the run folder is ``<output_dir>/<name>`` and the final LoRA ``<name>.safetensors``."""
    output_dir: str = "output"
    """Folder that holds run folders (ai-toolkit: training_folder)."""
    trigger_word: str | None = None
    """Word that activates the LoRA; stored in the LoRA metadata."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""

    _path = field_validator("output_dir")(plain_path)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(DEVICE_PATTERN, v):
            raise ValueError("not a device; use auto, cpu, cuda or cuda:N (e.g. cuda:1)")
        return v

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not v or "/" in v or "\\" in v or v in {".", ".."}:
            raise ValueError("must be a plain folder name (no slashes), e.g. my_lora")
        return v


class ModelConfig(Section):
    name_or_path: str = "Tongyi-MAI/Z-Image"
    """Base model: hub id ``org/name[@revision]``, a local diffusers folder, or ``builtin:tiny``; default from
    ``arch``."""
    arch: Literal["zimage", "zimage:turbo", "zimage:deturbo"] = "zimage"
    """Model family member. Fills what the config leaves unset: ``zimage:turbo`` -> Tongyi-MAI/Z-Image-Turbo,
    training adapter v2, previews 9 steps / guidance 0; ``zimage:deturbo`` -> ostris/Z-Image-De-Turbo, 25 / 3;
    ``zimage`` (Base) -> Tongyi-MAI/Z-Image, 30 / 4."""
    assistant_lora_path: str | None = None
    """Turbo training adapter: a ``.safetensors`` FILE (local path or ``org/repo/file.safetensors``), or ``v1`` /
    ``v2`` for ostris' adapters. ``null`` trains without one."""

    @field_validator("assistant_lora_path")
    @classmethod
    def _adapter_alias(cls, v: str | None) -> str | None:
        return TURBO_ADAPTERS.get(v, v) if v else v

    _path = field_validator("name_or_path", "assistant_lora_path")(plain_path)

    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Weight/compute dtype of the frozen base model. ``auto``: bf16 on CUDA, fp32 on CPU."""
    quantize: bool = False
    """Store the transformer's block weights quantized (``qtype``; torchao weight-only: computed in ``dtype``),
    about half the memory of bf16 for float8/int8. The LoRA trains on top in full precision."""
    qtype: Literal["float8", "qfloat8", "int8", "none"] = "float8"
    """float8 (also ai-toolkit's ``qfloat8``) or int8 weight-only; ``none`` turns ``quantize`` off."""
    quantize_te: bool = False
    """Store the text encoder's weights quantized too (``qtype_te``); it only encodes captions."""
    qtype_te: Literal["float8", "qfloat8", "int8", "none"] = "float8"
    """float8 or int8 weight-only for the text encoder (``quantize_te``)."""

    low_vram: bool = False
    """Low VRAM (ai-toolkit's name): layer offloading with ``blocks_to_swap: auto`` unless it is set, and the
    text encoder encodes captions on the CPU. Trains the same weights, slower."""
    blocks_to_swap: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] | None = None
    """Layer offloading (musubi-tuner's name): the last N of the 30 main blocks live in host memory and are copied
    to the GPU just ahead of use; ``auto`` picks N from the free GPU memory at setup; null: 0 (``auto`` with
    ``low_vram``)."""

    @field_validator("qtype", "qtype_te")
    @classmethod
    def _aitk_qtype(cls, v: str) -> str:
        return "float8" if v == "qfloat8" else v


class SaveConfig(Section):
    dtype: Literal["fp32", "bf16", "fp16"] = "bf16"
    """dtype of the saved LoRA weights (training state in checkpoints is always fp32)."""
    save_every: int = Field(250, ge=1)
    """Steps between checkpoints."""
    max_step_saves_to_keep: int = Field(4, ge=1)
    """Newest checkpoints kept; older ones are deleted."""


class EmaConfig(Section):
    use_ema: bool = False
    """Keep an exponential moving average of the trained weights (previews and saved files use it)."""
    ema_decay: float = Field(0.99, ge=0, le=1)
    """shadow <- decay * shadow + (1 - decay) * weights after each step (decay warms up as (1+n)/(10+n))."""


# train.lr_scheduler -> the lr_scheduler_params it takes (checked when the config is read, not at the first step)
SCHEDULER_PARAMS = {
    "constant": set(),
    "constant_with_warmup": set(),
    "linear": set(),
    "linear_ramp": {"start_factor", "end_factor", "total_iters"},
    "cosine": {"eta_min", "cosine_decay_steps"},
    "cosine_with_restarts": {"num_cycles"},
    "polynomial": {"power"},
    "step": {"step_size", "gamma"},
}


class TrainConfig(Section):
    steps: int = Field(2000, ge=1, le=MAX_STEPS)
    """Optimizer steps to train (raise it and run again to train longer)."""
    batch_size: int = Field(1, ge=1, le=MAX_BATCH)
    """Samples per batch (per process in a multi-GPU launch); a batch comes from one aspect bucket."""
    lr: float = Field(1e-4, gt=0)
    """Learning rate (Prodigy: 1.0)."""
    optimizer: Literal[
        "adamw",
        "adam",
        "adamw8bit",
        "adam8bit",
        "ademamix8bit",
        "lion",
        "lion8bit",
        "prodigy",
        "prodigy8bit",
        "adagrad",
        "adafactor",
        "automagic",
    ] = "adamw"
    """adamw / adam / adagrad (torch), adamw8bit / adam8bit / lion8bit / ademamix8bit (bitsandbytes, CPU too),
    lion (lion-pytorch), prodigy (prodigyopt; use lr 1.0), prodigy8bit (Prodigy with 8-bit states), adafactor
    (transformers), automagic (ai-toolkit's per-weight adaptive lr; lr = its start lr, e.g. 1e-6). ai-toolkit's
    ``adam8``, ``adamw8``, ``prodigyopt`` work too."""
    optimizer_params: dict[str, float | int | bool | list[float]] = Field(default_factory=dict)
    """Passed to the optimizer as keyword arguments (e.g. betas, eps, d_coef); checked against what it takes."""

    @field_validator("optimizer", mode="before")
    @classmethod
    def _optimizer_alias(cls, v):
        return OPTIMIZER_ALIASES.get(v.lower(), v.lower()) if isinstance(v, str) else v

    @field_validator("optimizer_params")
    @classmethod
    def _optimizer_params(cls, v: dict, info) -> dict:
        why = params_problem(info.data["optimizer"], v) if "optimizer" in info.data else None
        if why:
            raise ValueError(why)
        return v

    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay of the optimizer (AdamW's ``weight_decay``)."""
    lr_scheduler: Literal[
        "constant",
        "constant_with_warmup",
        "linear",
        "linear_ramp",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "step",
    ] = "constant"
    """How the learning rate moves over the run: constant; linear to 0; ``linear_ramp`` (torch's LinearLR, what
    ai-toolkit's ``linear`` is: from start_factor x lr to end_factor x lr over total_iters steps, default lr/3 to
    lr over the run); cosine to eta_min; cosine with restarts; polynomial; step-wise (``lr_scheduler_params``)."""
    lr_warmup_steps: int = Field(0, ge=0)
    """Linear warm-up steps (all schedulers except ``constant`` and ``linear_ramp``)."""
    lr_scheduler_params: dict[str, float | int] = Field(default_factory=dict)
    """Per scheduler (anything else is an error naming what it takes): cosine ``eta_min`` (the floor) and
    ``cosine_decay_steps`` (steps of the descent after the warm-up; default: the rest of the run);
    cosine_with_restarts ``num_cycles``; polynomial ``power``; step ``step_size`` and ``gamma`` (lr x gamma every
    step_size steps, default a third of the run and 0.5); linear_ramp ``start_factor``, ``end_factor``,
    ``total_iters``."""

    @field_validator("lr_scheduler_params")
    @classmethod
    def _scheduler_params(cls, v: dict, info) -> dict:
        name = info.data.get("lr_scheduler", "constant")
        unknown = sorted(set(v) - SCHEDULER_PARAMS.get(name, set()))
        if unknown:
            takes = ", ".join(sorted(SCHEDULER_PARAMS.get(name, set()))) or "nothing"
            raise ValueError(f"{unknown} do not apply to lr_scheduler {name}; it takes: {takes}")
        return v

    gradient_accumulation: int = Field(1, ge=1)
    """Batches per optimizer step (effective batch = batch_size x gradient_accumulation); ``steps`` counts
    optimizer steps."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient clipping norm; 0 disables clipping."""
    timestep_type: Literal["linear", "sigmoid", "shift", "weighted", "mid_weighted", "turbo_anchors"] = (
        "sigmoid"
    )
    """How sigma is drawn: ``linear`` uniform; ``sigmoid`` logit-normal (mass in mid noise); ``shift`` uniform
    then flow-shifted by ``timestep_shift`` (mass at high noise); ``weighted`` uniform with each sample's loss
    weighted as ai-toolkit's ``weighted`` does (its measured table: most at t = 600-960, up to 1.52; least at the
    ends); ``mid_weighted`` uniform with the loss weighted by 6 s (1 - s) (mid noise most); ``turbo_anchors``
    only the sigmas the sampler visits at ``anchor_steps`` steps, jittered (the "AC-RF" anchors of the None
    Z-Image Turbo trainer: keeps a Turbo LoRA working at 8-9 steps). `zlora config timesteps` shows each."""
    anchor_steps: int | None = Field(None, ge=1, le=MAX_SAMPLE_STEPS)
    """``turbo_anchors``: the sampler steps whose sigmas are trained; null: ``sample.sample_steps`` (9 for Turbo).
    The sigmas are Z-Image's sampler's: linspace(1, 1/N, N) shifted by ``timestep_shift``."""
    anchor_jitter: float = Field(0.02, ge=0, le=0.5)
    """``turbo_anchors``: standard deviation of the noise added to each drawn anchor sigma."""
    anchor_mix: float = Field(0.0, ge=0, le=1)
    """``turbo_anchors``: share of samples drawn uniformly instead of at an anchor."""
    snr_gamma: float | None = Field(None, gt=0)
    """Min-SNR-gamma loss weighting (e.g. 5), on top of the timestep type's: with SNR = ((1 - s) / s)^2 for
    x_s = (1 - s) x0 + s noise, each sample's loss is weighted by max(min(SNR, gamma) / (SNR + 1), 0.1), as the
    None Z-Image Turbo trainer does (mid noise most: 0.5 at s = 0.5; both ends 0.1). null: off."""
    timestep_shift: float = Field(3.0, gt=0)
    """Shift for ``timestep_type: shift``: s -> shift s / (1 + (shift - 1) s)."""
    timestep_bias: Literal["balanced", "high_noise", "low_noise"] = "balanced"
    """``high_noise`` (s -> 1 - (1 - s)^e) favours composition and style; ``low_noise`` (s -> s^e) identity and
    detail (e = ``timestep_bias_exponent``; ai-toolkit's content / style are e = 3)."""
    timestep_bias_exponent: float = Field(2.0, ge=1)
    """How strongly ``timestep_bias`` leans (2: quadratic; ai-toolkit's content_or_style samples cubically, 3)."""
    min_timestep: int = Field(0, ge=0, le=1000)
    """Lowest timestep trained, on the scheduler's 0-1000 scale (sigma = t / 1000)."""
    max_timestep: int = Field(1000, ge=1, le=1000)
    """Highest timestep trained, on the same 0-1000 scale (1000 is pure noise)."""
    loss_type: Literal["mse", "mae", "huber"] = "mse"
    """Per-sample loss between prediction and target: mean squared error, mean absolute error, or huber."""
    huber_delta: float = Field(1.0, gt=0)
    """Where the huber loss turns from quadratic to linear."""
    ema_config: EmaConfig = Field(default_factory=lambda: EmaConfig())
    """Exponential moving average of the LoRA weights: previews and saved files use it when on."""
    diff_output_preservation: bool = False
    """DOP: the LoRA's prediction on the caption with the trigger word replaced by
    ``diff_output_preservation_class`` is pulled towards the base model's on it, so the LoRA changes only
    what the trigger word asks for. Needs a trigger word."""
    diff_output_preservation_class: str = "person"
    """DOP's class word: it replaces the trigger word in the preservation caption."""
    diff_output_preservation_multiplier: float = Field(1.0, ge=0)
    """Weight of the DOP term in the loss."""
    do_differential_guidance: bool = False
    """Differential Guidance: the target is pushed past the current prediction,
    target <- pred + scale (target - pred) with pred detached (scale 1 is plain training)."""
    differential_guidance_scale: float = Field(3.0, gt=0)
    """How far past the current prediction Differential Guidance aims (1 is plain training)."""
    seed: int = 42
    """Seed of the network's initialisation, the data order, timesteps, noise and caption dropout."""
    gradient_checkpointing: bool = True
    """Recompute block activations in the backward pass: much less memory for about a third more compute."""
    lora_precision: Literal["auto", "fp32"] = "auto"
    """``auto``: with a bf16/fp16 base the LoRA computes in that dtype (no casts around every LoRA module) and the
    optimizer keeps fp32 master weights; ``fp32``: LoRA weights and compute in fp32 (peft's default)."""
    compile: bool | Literal["auto"] = "auto"
    """Regional ``torch.compile`` of the transformer's repeated blocks (diffusers' ``compile_repeated_blocks``).
    ``auto``: on for CUDA, off on CPU. The first steps are slower (warm-up, logged); if compilation fails (no C
    compiler, an unsupported op) the run warns and continues eager."""
    cache_text_embeddings: bool = False
    """Keep every caption's text embedding on disk (in each dataset's cache_dir), so later runs need no text
    encoder at all. Off: captions are encoded once per run and kept in memory."""
    unload_text_encoder: bool = True
    """Free the text encoder once every caption is encoded (zlora never needs it afterwards)."""


class PromptConfig(Section):
    """One preview prompt; each unset value comes from the ``sample`` section."""

    prompt: str
    """The prompt text (``[trigger]`` is not replaced here: write the trigger word itself)."""
    width: int | None = Field(None, ge=16, multiple_of=16)
    """Width of this prompt's previews (default ``sample.width``)."""
    height: int | None = Field(None, ge=16, multiple_of=16)
    """Height of this prompt's previews (default ``sample.height``)."""
    seed: int | None = None
    """Seed of this prompt's first column (default ``sample.seed``, plus the prompt's index with ``walk_seed``)."""
    neg: str | None = None
    """Negative prompt of this prompt (default ``sample.neg``)."""


class SampleConfig(Section):
    sample_every: int = Field(250, ge=1)
    """Steps between preview grids (a grid is also made at step 0 unless ``skip_first_sample``)."""
    skip_first_sample: bool = False
    """No preview grid at step 0 (the base model)."""
    prompts: list[str | PromptConfig] = Field(default_factory=list)
    """Preview prompts, one grid row each: a string, or ``{prompt, width, height, seed, neg}``. Include prompts
    without the trigger word: they show whether the LoRA leaks into everything. Empty: no previews."""
    width: int = Field(1024, ge=16, multiple_of=16)
    """Preview width in pixels (a multiple of 16)."""
    height: int = Field(1024, ge=16, multiple_of=16)
    """Preview height in pixels (a multiple of 16)."""
    sample_steps: int = Field(9, ge=1, le=MAX_SAMPLE_STEPS)
    """Scheduler steps (Turbo: 9 = 8 transformer forwards); filled from ``model.arch`` when unset."""
    guidance_scale: float = Field(0.0, ge=0)
    """Filled from ``model.arch`` when unset."""
    neg: str = ""
    """Negative prompt (used when guidance_scale > 0)."""
    seed: int = 42
    """Seed of the previews (the same seed at every step, so grids compare)."""
    walk_seed: bool = False
    """Prompt ``i`` starts at seed ``seed + i`` instead of every prompt starting at ``seed``."""
    samples_per_prompt: int = Field(1, ge=1)
    """Grid columns: seeds ``seed``, ``seed+1``, ..."""
    network_multiplier: float = 1.0
    """Weight of the LoRA in previews."""

    def prompt_list(self) -> list[PromptConfig]:
        """Every prompt with its own settings filled in from this section."""
        out = []
        for i, p in enumerate(self.prompts):
            p = PromptConfig(prompt=p) if isinstance(p, str) else p
            seed = p.seed if p.seed is not None else self.seed + (i if self.walk_seed else 0)
            out.append(
                PromptConfig(
                    prompt=p.prompt,
                    width=p.width or self.width,
                    height=p.height or self.height,
                    seed=seed,
                    neg=self.neg if p.neg is None else p.neg,
                )
            )
        return out


class HubConfig(Section):
    models_dir: str | None = None
    """Folder that holds pulled models (``<org>--<name>``); default $ZLORA_MODELS_DIR, else ~/.cache/zlora/models."""
    endpoint: str | None = None
    """Hub or mirror URL (e.g. https://hf-mirror.com); default $HF_ENDPOINT, else huggingface.co."""
    offline: bool = False
    """Never touch the network (also HF_HUB_OFFLINE=1): a model not complete on disk is an error."""

    _path = field_validator("models_dir")(plain_path)


class Config(Section):
    job: JobConfig = Field(default_factory=JobConfig)
    """The run: its name, output folder, trigger word and device."""
    hub: HubConfig = Field(default_factory=HubConfig)
    """Where models come from: models folder, endpoint (mirror), offline."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The base model, its training adapter, dtype and quantization."""
    network: NetworkConfig = Field(default_factory=LoraNetworkConfig)
    """What trains: the network type, its rank and alpha, and the modules it targets."""
    save: SaveConfig = Field(default_factory=SaveConfig)
    """Checkpoints and the saved file's dtype."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Steps, batch, optimizer, schedule, timesteps, loss and the preservation options."""
    datasets: list[DatasetConfig] = Field(default_factory=list)
    """Folders of images with captions; each with its own resolutions, repeats, caching and flags."""
    sample: SampleConfig = Field(default_factory=SampleConfig)
    """Preview grids during training: prompts, size, steps, guidance, seeds."""
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    """A validation loss on held-out images at fixed noise levels, every ``every`` steps (metrics.jsonl, loss.png)."""

    @model_validator(mode="after")
    def _needs_data(self) -> Config:
        if not self.datasets:
            raise ValueError("`datasets` is empty: add at least one entry with a folder_path")
        t = self.train
        if t.diff_output_preservation and not (
            self.job.trigger_word or any(d.trigger_word for d in self.datasets)
        ):
            raise ValueError("`train.diff_output_preservation` needs a trigger word: set job.trigger_word")
        v = self.validation
        if v.every and not (v.datasets or v.split):
            raise ValueError(
                "`validation.every` needs held-out images: validation.datasets, or validation.split (e.g. 0.1)"
            )
        if v.split and not v.every:
            raise ValueError("`validation.split` holds images out for nothing: set validation.every too")
        if t.min_timestep >= t.max_timestep:
            raise ValueError(
                f"`train.min_timestep` ({t.min_timestep}) must be below max_timestep ({t.max_timestep})"
            )
        return self

    @model_validator(mode="after")
    def _arch_defaults(self) -> Config:
        """``model.arch`` fills what the config leaves unset; anything set explicitly wins."""
        preset = ARCH_PRESETS[self.model.arch]
        for section in (self.model, self.sample):
            for name, value in preset.items():
                if name in type(section).model_fields and name not in section.model_fields_set:
                    object.__setattr__(section, name, TURBO_ADAPTERS.get(value, value) if value else value)
        if (
            self.train.anchor_steps is None
        ):  # turbo_anchors: the preview sampler's steps, now that they are known
            object.__setattr__(self.train, "anchor_steps", self.sample.sample_steps)
        return self
