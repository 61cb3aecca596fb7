"""Pretrain ``builtin:shapes``: a small Z-Image of the real classes on the procedural shapes world.

    python examples/pretrain_shapes.py                       # ~47 min on 2 CPU cores; writes src/zlora/shapes/model
    python examples/pretrain_shapes.py --vae-steps 20 --dit-steps 20 --out /tmp/s   # a smoke run

Stages (each resumes from its finished output in ``--work``):
1. tokenizer (byte-level BPE on the world's captions) and a Qwen3 text encoder, random and frozen: its features
   tell the words and their positions apart, which is all the transformer needs from it here;
2. the VAE (AutoencoderKL, 16 latent channels like the real one, but factor 4: at 64 px, factor 8 leaves the
   transformer a 4x4 grid of patches, too coarse to draw a triangle; the first try drew blobs) for
   reconstruction (MSE + L1 + a small KL) on rendered scenes of every shape, the star included: the VAE is a
   general image codec, not what knows the concept; shift/scaling factors are then measured so training
   latents have mean 0 and std 1;
3. the transformer (ZImageTransformer2DModel) from scratch with zlora's own flow-matching code (``zimage``'s
   noising, velocity target and call convention, ``timesteps``' sigma sampling and loss), 10% empty captions
   so previews can use CFG, an EMA of the weights is what ships. The star is never shown to it.

Deterministic from ``--seed`` on a given machine and torch build (single process, fixed thread count).
Weights are saved in fp16 (loaded in fp32 or bf16 by the usual loaders) to keep the package small.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from zlora.models import zimage
from zlora.models.tiny import TEXT_ENCODER_CONFIG, TRANSFORMER_CONFIG, VAE_CONFIG, build_tokenizer
from zlora.shapes.world import (
    ALL_SHAPES,
    COLOURS,
    SHAPES,
    SIZES,
    SPREAD,
    TRIGGER,
    Scene,
    random_scene,
    render,
)

REPO = Path(__file__).resolve().parents[1]
# builtin:tiny's configs, grown where the model has to learn something (and the VAE at factor 4, see above).
TRANSFORMER = {
    **TRANSFORMER_CONFIG,
    "dim": 128,
    "n_layers": 6,
    "n_heads": 4,
    "n_kv_heads": 4,
    "cap_feat_dim": 64,
    "axes_lens": [256, 64, 64],
}
TEXT_ENCODER = {
    **TEXT_ENCODER_CONFIG,
    "hidden_size": 64,
    "intermediate_size": 128,
    "head_dim": 32,
    "max_position_embeddings": 512,
}
VAE = {
    **VAE_CONFIG,
    "block_out_channels": (16, 32, 64),
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "norm_num_groups": 8,
    "scaling_factor": 1.0,
    "shift_factor": 0.0,
}  # the factors are measured after training
# The flow-matching shift of the shipped scheduler; training sigmas are logit-normal bent by the same shift, so
# the high-noise steps where the sampler decides a shape's outline get the training they need (with plain
# logit-normal sigmas the first model's one-step outlines were good at sigma <= 0.5 and poor at >= 0.8).
SHIFT = 3.0


def log(work: Path, **row) -> None:
    row["time"] = round(time.time(), 1)
    with open(work / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def world_corpus() -> list[str]:
    """Every caption the world can produce (the tokenizer learns each word as one token), plus the trigger."""
    cols = list(COLOURS)
    caps = [
        Scene(s, fg, bg, bg2).caption()
        for s in ALL_SHAPES
        for fg in cols
        for bg in cols
        for bg2 in [None, *cols]
        if len({fg, bg, bg2} - {None}) == (3 if bg2 else 2)
    ]
    return caps + [Scene("circle", "red", "blue").caption(TRIGGER)] * 50


def to_pixels(images) -> torch.Tensor:
    import numpy as np

    arr = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)
    return arr.float() / 127.5 - 1


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def train_vae(work: Path, steps: int, seed: int, batch: int = 16):
    from diffusers import AutoencoderKL

    out = work / "vae"
    if (out / "config.json").is_file():
        return AutoencoderKL.from_pretrained(out)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, 1e-3, 100)
        x = to_pixels([render(random_scene(rng, ALL_SHAPES)) for _ in range(batch)])
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        kl = dist.kl().mean() / dist.mean[0].numel()
        loss = mse + F.l1_loss(rec, x) + 1e-4 * kl  # L1 keeps edges and corners sharp
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            log(
                work,
                stage="vae",
                step=step,
                mse=round(mse.item(), 5),
                kl=round(kl.item(), 4),
                s=round(time.time() - t0, 1),
            )
    vae.eval().requires_grad_(False)
    # Normalisation as the real VAE has it: (z - shift) * scale has mean 0 and std 1 over the world.
    rng = random.Random(seed + 1)
    with torch.no_grad():
        z = torch.cat(
            [
                vae.encode(to_pixels([render(random_scene(rng)) for _ in range(64)])).latent_dist.mean
                for _ in range(8)
            ]
        )
    vae.register_to_config(
        shift_factor=round(z.mean().item(), 4), scaling_factor=round(1 / z.std().item(), 4)
    )
    vae.save_pretrained(out)
    return vae


def build_text_side(work: Path, seed: int):
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = build_tokenizer(world_corpus(), vocab_size=320)
    torch.manual_seed(seed)
    te = Qwen3Model(Qwen3Config(vocab_size=len(tokenizer), **TEXT_ENCODER)).eval().requires_grad_(False)
    return tokenizer, te


@torch.no_grad()
def encode_dataset(vae, n: int, seed: int):
    """n scenes of the base world (no star; shapes near the centre, ``world.SIZES``/``SPREAD``): latent mean/std,
    captions. A first run with shapes anywhere at any size drew irregular blobs after 3,000 steps."""
    rng = random.Random(seed)
    scenes = [random_scene(rng, SHAPES, sizes=SIZES, spread=SPREAD) for _ in range(n)]
    means, stds = [], []
    for i in range(0, n, 256):
        d = vae.encode(to_pixels([render(s) for s in scenes[i : i + 256]])).latent_dist
        means.append(d.mean)
        stds.append(d.std)
    return torch.cat(means), torch.cat(stds), [s.caption() for s in scenes]


def train_transformer(work: Path, vae, tokenizer, te, steps: int, seed: int, n_data: int, batch: int = 32):
    from diffusers import ZImageTransformer2DModel

    from zlora.config.schema import TrainConfig
    from zlora.train.timesteps import flow_shift, sample_sigmas

    out = work / "transformer"
    if (out / "config.json").is_file():
        return ZImageTransformer2DModel.from_pretrained(out)
    t0 = time.time()
    means, stds, captions = encode_dataset(vae, n_data, seed + 2)
    uniq = sorted(set(captions)) + [""]
    feats = dict(zip(uniq, zimage.encode_prompts(tokenizer, te, uniq, max_length=64), strict=True))
    log(work, stage="dit-data", scenes=n_data, captions=len(feats), s=round(time.time() - t0, 1))
    sh, sc = vae.config.shift_factor, vae.config.scaling_factor
    torch.manual_seed(seed)
    model = ZImageTransformer2DModel(**TRANSFORMER)
    with torch.no_grad():
        model.x_pad_token.normal_(0.0, 0.02)
        model.cap_pad_token.normal_(0.0, 0.02)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, betas=(0.9, 0.99))
    tcfg = TrainConfig(timestep_type="sigmoid")
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, 1e-3, 200)
        idx = torch.randint(0, n_data, (batch,), generator=gen)
        z = means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)
        x0 = (z - sh) * sc
        drop = torch.rand(batch, generator=gen) < 0.1
        caps = [feats["" if d else captions[i]] for i, d in zip(idx.tolist(), drop.tolist(), strict=True)]
        sigma = flow_shift(sample_sigmas(tcfg, batch, gen, torch.device("cpu")), SHIFT)
        noise = torch.randn(x0.shape, generator=gen)
        x_s = zimage.noisy_latents(x0, noise, sigma.view(-1, 1, 1, 1))
        pred = torch.stack(zimage.predict(model, list(x_s), sigma, caps, torch.float32))
        loss = F.mse_loss(pred, zimage.velocity_target(x0, noise))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        if step % 1000 == 999 and step < steps - 1:  # snapshots to judge the run while it goes on
            ema.save_pretrained(work / f"transformer-step{step + 1}")
        if step % 50 == 0 or step == steps - 1:
            log(work, stage="dit", step=step, loss=round(loss.item(), 4), s=round(time.time() - t0, 1))
    ema.save_pretrained(out)
    return ema


def assemble(out: Path, vae, tokenizer, te, transformer) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=SHIFT, use_dynamic_shifting=False
    )
    pipe = ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=te, tokenizer=tokenizer, transformer=transformer
    )
    pipe.to(torch.float16)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "src/zlora/shapes/model")
    ap.add_argument("--work", type=Path, default=REPO / "output/pretrain_shapes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-steps", type=int, default=2000)
    ap.add_argument("--dit-steps", type=int, default=6000)
    ap.add_argument("--scenes", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    vae = train_vae(a.work, a.vae_steps, a.seed)
    tokenizer, te = build_text_side(a.work, a.seed)
    transformer = train_transformer(a.work, vae, tokenizer, te, a.dit_steps, a.seed, a.scenes)
    assemble(a.out, vae, tokenizer, te, transformer)
    log(a.work, stage="done", out=str(a.out), s=round(time.time() - t0, 1))


if __name__ == "__main__":
    main()
