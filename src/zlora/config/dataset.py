"""One entry of ``datasets``: a folder of images with captions, its resolutions, repeats, caching and flags (in
its own module to keep ``schema.py`` readable; ``schema`` re-exports it)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from zlora.config.base import Section, plain_path


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
    is_reg: bool = False
    """A regularisation set (ai-toolkit's ``is_reg``): pictures of what the LoRA should leave alone, captioned
    without the trigger word (it is never added to them), trained alongside the other datasets."""
    prior_reg: bool = False
    """Train this dataset's images towards the base model's own prediction on them (the LoRA at weight 0)
    instead of towards the image: the LoRA learns to change nothing there (ai-toolkit's ``prior_reg``; use with
    ``is_reg``). Costs one forward without gradients per such sample."""
    mask_path: str | None = None
    """Folder of loss masks (ai-toolkit's ``mask_path``): for each image a same-named image there (any image
    type), white where the loss counts, black where it does not; cropped, resized and flipped with its image and
    averaged over each latent pixel. Every image needs one, of its aspect ratio."""
    alpha_mask: bool = False
    """Use each image's own alpha channel as its loss mask (ai-toolkit's ``alpha_mask``; every image needs
    one); the image itself is trained composited on white."""
    mask_min_value: float = Field(0.0, ge=0, le=1)
    """The loss weight of a mask's black (ai-toolkit's ``mask_min_value``): the mask's 0..1 becomes this..1, so
    0 trains nothing outside the mask and e.g. 0.1 keeps a little of the background."""
    invert_mask: bool = False
    """Swap the mask's black and white (ai-toolkit's ``invert_mask``)."""

    _path = field_validator("folder_path", "cache_dir", "mask_path")(plain_path)

    @model_validator(mode="after")
    def _one_mask_source(self):
        if self.mask_path and self.alpha_mask:
            raise ValueError(
                "set either mask_path (a folder of masks) or alpha_mask (the images' alpha), not both"
            )
        return self

    @field_validator("folder_path")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("is empty: choose the folder of images and captions")
        return v

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


class ValidationConfig(Section):
    every: int = Field(0, ge=0)
    """Steps between validation losses (0: off); also before the first step and at the last."""
    sigmas: list[float] = Field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    """Noise levels each held-out image is scored at, with fixed noise per image: the same inputs every time."""
    datasets: list[DatasetConfig] = Field(default_factory=list)
    """Held-out images with captions, never trained on (same fields as ``datasets``)."""
    split: float = Field(0.0, ge=0, lt=1)
    """Share of each training dataset's images (not of ``is_reg`` ones) held out for validation instead of
    trained on, beside ``validation.datasets``: e.g. 0.1 keeps 1 of 10 images aside (at least 1 of 2 or more).
    Which ones depends only on the file names, so the split is the same in every run and at a resume."""
    seed: int = 0
    """Seed of the fixed validation noise."""

    @field_validator("sigmas")
    @classmethod
    def _levels(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < s <= 1 for s in v):
            raise ValueError(f"noise levels must be in (0, 1], e.g. [0.1, 0.5, 0.9]; got {v}")
        return v
