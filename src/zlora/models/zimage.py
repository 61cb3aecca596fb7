"""The ONE place that knows Z-Image conventions (verified against diffusers 0.42's ZImagePipeline).

- noising: ``x_s = (1 - s) * x0 + s * noise`` with sigma ``s`` in [0, 1];
- the transformer is called with ``t = 1 - s`` and its raw output is the velocity ``x0 - noise``;
- inputs are lists: latents ``(C, 1, H, W)`` per sample, caption features ``[L, D]`` per sample;
- latents are ``(z - shift_factor) * scaling_factor``;
- prompts go through the chat template and ``hidden_states[-2]`` of Qwen3, padded positions dropped.
"""

from __future__ import annotations

import torch

MAX_SEQUENCE_LENGTH = 512
# The pipeline needs height/width divisible by vae_scale_factor * patch size (8 * 2).
SIZE_MULTIPLE = 16


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x_s = (1 - s) x0 + s noise``; ``sigma`` is a scalar tensor or broadcasts against ``x0``."""
    return (1 - sigma) * x0 + sigma * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What the raw transformer output should equal."""
    return x0 - noise


def predict(
    transformer,
    x_s: list[torch.Tensor],
    sigma: torch.Tensor,
    cap_feats: list[torch.Tensor],
    dtype: torch.dtype,
) -> list[torch.Tensor]:
    """Raw transformer output for noisy latents ``x_s`` (B x (C, H, W), sizes may differ) at sigmas (B,)."""
    x_list = [x.to(dtype).unsqueeze(1) for x in x_s]  # B x (C, 1, H, W)
    t = (1 - sigma).to(dtype)  # Z-Image's timestep runs the other way: t = 0 is pure noise
    out = transformer(x_list, t, [c.to(dtype) for c in cap_feats], return_dict=False)[0]
    return [o.squeeze(1) for o in out]  # B x (C, H, W)


def encode_images(vae, pixels: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """pixels (B, 3, H, W) in [-1, 1] -> normalised training latents (B, C, H/8, W/8), float32.
    The latent is sampled from the VAE's posterior with noise from one seed per image, so an image encodes to
    the same latent alone or in any batch, cached or not."""
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    noise = torch.stack(
        [torch.randn(dist.mean.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds]
    ).to(dist.mean.device, dist.mean.dtype)
    z = dist.mean + dist.std * noise
    return ((z - vae.config.shift_factor) * vae.config.scaling_factor).float()


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    z = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
    return vae.decode(z, return_dict=False)[0]


def chat_prompt(tokenizer, prompt: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=True,
    )


@torch.no_grad()
def encode_prompts(
    tokenizer, text_encoder, prompts: list[str], max_length: int = MAX_SEQUENCE_LENGTH
) -> list[torch.Tensor]:
    """Prompt features exactly as ZImagePipeline computes them: one ``[L, D]`` tensor per prompt."""
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    enc = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    ids = enc.input_ids.to(text_encoder.device)
    mask = enc.attention_mask.to(text_encoder.device).bool()
    hidden = text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
    return [hidden[i][mask[i]] for i in range(len(prompts))]
