"""A tiny random Z-Image built from the real classes, saved in the diffusers folder layout.

It is the test harness and the demo default (``builtin:tiny``): the loading, training and sampling code runs on it
exactly as on the real 6 B model, only the configs are shrunk. Same seed -> same weights and tokenizer.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from zlora.utils.io import cache_dir, public_mode

TINY_VERSION = 1  # bump when the recipe below changes, so cached copies are rebuilt

# Qwen3's chat template, reduced to what ZImagePipeline uses: user turns, the generation prompt, and the empty
# thinking block that the real template adds when enable_thinking is False.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
_CORPUS = [
    "a photo of a red circle on a blue background",
    "a green square, studio lighting, high detail",
    "portrait of a woman with short hair, soft light",
    "a cat sitting on a wooden table next to an apple",
    "zlora style, a yellow triangle over a purple gradient",
    "landscape with mountains, a lake and a small house at sunset",
    "一只猫坐在桌子上",
    "<|im_start|>user\n",
    "<|im_end|>\n<|im_start|>assistant\n",
]

TRANSFORMER_CONFIG = dict(
    all_patch_size=(2,),
    all_f_patch_size=(1,),
    in_channels=16,
    dim=64,
    n_layers=2,
    n_refiner_layers=1,
    n_heads=2,
    n_kv_heads=2,
    norm_eps=1e-5,
    qk_norm=True,
    cap_feat_dim=32,
    rope_theta=256.0,
    t_scale=1000.0,
    axes_dims=[8, 12, 12],
    axes_lens=[1024, 128, 128],
)
TEXT_ENCODER_CONFIG = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    max_position_embeddings=1024,
    rope_theta=1_000_000.0,
    tie_word_embeddings=False,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=16,
    block_out_channels=(8, 16, 16, 16),
    layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=4,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)


def build_tokenizer(corpus: list[str] | None = None, vocab_size: int = 384):
    """A byte-level BPE tokenizer trained offline on a fixed corpus, wrapped as Qwen2Tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus or _CORPUS, trainer)
    return Qwen2Tokenizer(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )


# `zlora bench --size real`: the real transformer (diffusers' defaults are Z-Image's config: dim 3840, 30 layers,
# 6.15 B parameters) with random weights, fed by a one-layer text encoder of the real width (2560).
REAL_TEXT_ENCODER_CONFIG = {
    **TEXT_ENCODER_CONFIG,
    "hidden_size": 2560,
    "intermediate_size": 256,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 64,
}


def build_pipeline(seed: int = 0, size: str = "tiny", n_layers: int | None = None):
    """The tiny ZImagePipeline in memory, deterministic from ``seed``; ``size="real"``: the real transformer (bf16,
    random weights) with the tiny VAE and a one-layer text encoder of the real width (benchmarks). ``n_layers``:
    another number of main blocks (layer offloading tests)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = build_tokenizer()
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        config = dict(TRANSFORMER_CONFIG) if size == "tiny" else {}
        if n_layers is not None:
            config["n_layers"] = n_layers
        if size == "tiny":
            transformer = ZImageTransformer2DModel(**config)
        else:  # built in bf16 directly: 6.15 B parameters are 24.6 GB in fp32, 12.3 GB in bf16
            default = torch.get_default_dtype()
            torch.set_default_dtype(torch.bfloat16)
            try:
                transformer = ZImageTransformer2DModel(**config)
            finally:
                torch.set_default_dtype(default)
        # The pad tokens are not covered by the model's init; any model built from config must fill them.
        with torch.no_grad():
            transformer.x_pad_token.normal_(0.0, 0.02)
            transformer.cap_pad_token.normal_(0.0, 0.02)
        te_config = TEXT_ENCODER_CONFIG if size == "tiny" else REAL_TEXT_ENCODER_CONFIG
        text_encoder = Qwen3Model(Qwen3Config(vocab_size=len(tokenizer), **te_config))
        vae = AutoencoderKL(**VAE_CONFIG)
    finally:
        torch.random.set_rng_state(gen_state)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False
    )
    return ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


def make_tiny(out_dir: str | Path, seed: int = 0, size: str = "tiny", n_layers: int | None = None) -> Path:
    """Write the tiny model (or the real-size bench model) to ``out_dir`` (diffusers layout). Built in a temp folder,
    then renamed into place."""
    out_dir = Path(out_dir)
    if (out_dir / "model_index.json").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    public_mode(tmp, directory=True)  # mkdtemp makes 0700 folders
    try:
        build_pipeline(seed, size, n_layers).save_pretrained(tmp)
        if out_dir.exists() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        try:
            os.replace(tmp, out_dir)
        except OSError:
            # Another process finished the same build first; its copy is identical.
            if not (out_dir / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def bench_model_path(size: str) -> Path:
    """The model `zlora bench` trains: builtin:tiny, or the real-size random one (built once, ~12 GB, in the cache)."""
    if size == "tiny":
        return builtin_tiny_path()
    return make_tiny(cache_dir() / "models" / f"bench-real-v{TINY_VERSION}", 0, "real")


def builtin_tiny_path(seed: int = 0) -> Path:
    """Folder of ``builtin:tiny`` in the cache, created on first use."""
    return make_tiny(cache_dir() / "models" / f"tiny-v{TINY_VERSION}-seed{seed}", seed)
