"""The typed config tree. Defaults live here and only here; section and field names follow ai-toolkit's where
the meaning is the same. Unknown keys are rejected (see ``load.py`` for the messages)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_TARGET_MODULES = [
    "attention.to_q",
    "attention.to_k",
    "attention.to_v",
    "attention.to_out.0",
    "feed_forward.w1",
    "feed_forward.w2",
    "feed_forward.w3",
]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class JobConfig(Section):
    name: str = "my_lora"
    """Run name: the run folder is ``<output_dir>/<name>`` and the final LoRA ``<name>.safetensors``."""
    output_dir: str = "output"
    """Folder that holds run folders (ai-toolkit: training_folder)."""
    trigger_word: str | None = None
    """Word that activates the LoRA; stored in the LoRA metadata."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not v or "/" in v or "\\" in v or v in {".", ".."}:
            raise ValueError("must be a plain folder name (no slashes), e.g. my_lora")
        return v


class ModelConfig(Section):
    name_or_path: str = "builtin:tiny"
    """Base model: hub id ``org/name[@revision]``, a local diffusers folder, or ``builtin:tiny``."""
    arch: Literal["zimage", "zimage:turbo", "zimage:deturbo"] = "zimage"
    """Model family member; later versions fill sampling and adapter defaults from it."""
    assistant_lora_path: str | None = None
    """Turbo training adapter: a ``.safetensors`` FILE (local path or ``org/repo/file.safetensors``)."""
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Weight/compute dtype of the frozen base model. ``auto``: bf16 on CUDA, fp32 on CPU."""


class NetworkConfig(Section):
    type: Literal["lora"] = "lora"
    linear: int = Field(16, ge=1)
    """LoRA rank."""
    linear_alpha: float = Field(16, gt=0)
    """LoRA alpha; the update is scaled by alpha / rank."""
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    """Module names inside each block that get a LoRA."""
    target_blocks: list[Literal["layers", "noise_refiner", "context_refiner"]] = Field(
        default_factory=lambda: ["layers"]
    )
    """Which block lists of the transformer are targeted."""


class SaveConfig(Section):
    dtype: Literal["fp32", "bf16", "fp16"] = "bf16"
    """dtype of the saved LoRA weights (training state in checkpoints is always fp32)."""
    save_every: int = Field(250, ge=1)
    """Steps between checkpoints."""
    max_step_saves_to_keep: int = Field(4, ge=1)
    """Newest checkpoints kept; older ones are deleted."""


class TrainConfig(Section):
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    optimizer: Literal["adamw"] = "adamw"
    optimizer_params: dict[str, float | int | bool | list[float]] = Field(default_factory=dict)
    """Passed to the optimizer as keyword arguments (e.g. weight_decay, betas)."""
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
    ] = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient clipping norm; 0 disables clipping."""
    timestep_type: Literal["linear", "sigmoid"] = "sigmoid"
    """How sigma is drawn: ``linear`` uniform in [0, 1]; ``sigmoid`` logit-normal (mass in mid noise)."""
    seed: int = 42
    gradient_checkpointing: bool = True
    cache_text_embeddings: bool = False
    """Keep every caption's text embedding on disk (in each dataset's cache_dir), so later runs need no text
    encoder at all. Off: captions are encoded once per run and kept in memory."""
    unload_text_encoder: bool = True
    """Free the text encoder once every caption is encoded (zlora never needs it afterwards)."""


class DatasetConfig(Section):
    folder_path: str
    """Folder with images and caption files."""
    caption_ext: str = "txt"
    """Caption file extension, with or without the dot."""
    default_caption: str = ""
    """Caption for images without a caption file."""
    resolution: list[int] = Field(default_factory=lambda: [512])
    """Training resolution(s): each image goes, per resolution, to the aspect-ratio bucket of about that area
    (sides multiples of 16, closest ratio), resized and centre-cropped minimally; never upscaled."""
    num_repeats: int = Field(1, ge=1)
    """How many times each image is seen per epoch (weights one dataset against another)."""
    caption_dropout_rate: float = Field(0.05, ge=0, le=1)
    """Probability that a sample is trained with the empty prompt instead of its caption."""
    trigger_word: str | None = None
    """Overrides ``job.trigger_word`` for this dataset."""
    add_trigger_word: bool = True
    """Prepend the trigger word to captions that do not contain it (``[trigger]`` is always replaced)."""
    include_subfolders: bool = False
    """Also read images in subfolders of ``folder_path``."""
    flip_x: bool = False
    """Also train on the horizontally mirrored image (each its own sample and cache entry)."""
    cache_latents: bool = False
    """Encode each (image, bucket, flip) with the VAE once and keep it on disk; later epochs and runs reuse it.
    Off: images are encoded as they are drawn."""
    cache_dir: str | None = None
    """Where this dataset's caches live; default ``<folder_path>/_zlora_cache``."""

    @field_validator("resolution", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, int) else v

    @field_validator("resolution")
    @classmethod
    def _multiple_of_16(cls, v: list[int]) -> list[int]:
        bad = [r for r in v if r < 16 or r % 16]
        if bad or not v:
            raise ValueError(f"resolutions must be multiples of 16 and at least 16, got {bad or v}")
        return v

    @field_validator("caption_ext")
    @classmethod
    def _strip_dot(cls, v: str) -> str:
        return v.lstrip(".")


class SampleConfig(Section):
    sample_every: int = Field(250, ge=1)
    """Steps between preview grids (a grid is also made at step 0)."""
    prompts: list[str] = Field(default_factory=list)
    """Preview prompts: one grid row each. Empty: no previews."""
    width: int = Field(1024, ge=16, multiple_of=16)
    height: int = Field(1024, ge=16, multiple_of=16)
    sample_steps: int = Field(9, ge=1)
    guidance_scale: float = Field(0.0, ge=0)
    neg: str = ""
    """Negative prompt (used when guidance_scale > 0)."""
    seed: int = 42
    samples_per_prompt: int = Field(1, ge=1)
    """Grid columns: seeds ``seed``, ``seed+1``, ..."""


class Config(Section):
    job: JobConfig = Field(default_factory=JobConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    save: SaveConfig = Field(default_factory=SaveConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    datasets: list[DatasetConfig] = Field(default_factory=list)
    sample: SampleConfig = Field(default_factory=SampleConfig)

    @model_validator(mode="after")
    def _needs_data(self) -> Config:
        if not self.datasets:
            raise ValueError("`datasets` is empty: add at least one entry with a folder_path")
        return self
