import json

import torch
from safetensors.torch import load_file

from zlora.models import zimage
from zlora.models.load import load_components, make_pipeline
from zlora.models.tiny import build_pipeline, make_tiny


def test_tiny_is_a_diffusers_folder_of_the_real_classes(tiny_dir):
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["_class_name"] == "ZImagePipeline"
    assert index["transformer"] == ["diffusers", "ZImageTransformer2DModel"]
    assert index["text_encoder"] == ["transformers", "Qwen3Model"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["tokenizer"][1] in ("Qwen2Tokenizer", "Qwen2TokenizerFast")
    parts = load_components(tiny_dir, torch.float32, torch.device("cpu"))
    assert parts.vae.config.latent_channels == 16 and 2 ** (len(parts.vae.config.block_out_channels) - 1) == 8
    assert parts.scheduler.config.shift == 3.0 and not parts.scheduler.config.use_dynamic_shifting
    for pad in (parts.transformer.x_pad_token, parts.transformer.cap_pad_token):
        assert torch.isfinite(pad).all() and pad.abs().sum() > 0


def test_tiny_is_deterministic_from_its_seed(tmp_path):
    a, b, c = (
        make_tiny(tmp_path / "a", seed=3),
        make_tiny(tmp_path / "b", seed=3),
        make_tiny(tmp_path / "c", seed=4),
    )
    wa, wb, wc = (load_file(d / "transformer" / "diffusion_pytorch_model.safetensors") for d in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert (a / "tokenizer" / "tokenizer.json").read_text() == (
        b / "tokenizer" / "tokenizer.json"
    ).read_text()


def test_prompt_features_match_the_pipeline():
    pipe = build_pipeline(seed=0)
    prompts = ["a red circle", "一只猫 on a table, with a much longer caption than the first one"]
    ours = zimage.encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts)
    theirs, _ = pipe.encode_prompt(prompts, device=torch.device("cpu"), do_classifier_free_guidance=False)
    assert [o.shape for o in ours] == [t.shape for t in theirs] and ours[0].shape[0] < ours[1].shape[0]
    assert all(torch.equal(o, t) for o, t in zip(ours, theirs, strict=True))
    text = zimage.chat_prompt(pipe.tokenizer, "hi")
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_velocity_convention_matches_one_euler_step_of_the_pipeline_scheduler(tiny_dir):
    """With the target ``x0 - noise`` the pipeline's (negated) Euler step from sigma s to 0 lands on x0."""
    parts = load_components(tiny_dir, torch.float32, torch.device("cpu"))
    sched = parts.scheduler
    sched.set_timesteps(sigmas=[0.7], device="cpu")
    x0, noise = torch.randn(1, 16, 4, 4), torch.randn(1, 16, 4, 4)
    s = sched.sigmas[0]
    x_s = zimage.noisy_latents(x0, noise, s)
    # The pipeline negates the transformer output before scheduler.step.
    stepped = sched.step(-zimage.velocity_target(x0, noise), sched.timesteps[0], x_s, return_dict=False)[0]
    torch.testing.assert_close(stepped, x0, rtol=0, atol=1e-5)


def test_predict_accepts_mixed_sizes_in_one_batch(tiny_dir):
    pipe = make_pipeline(load_components(tiny_dir, torch.float32, torch.device("cpu")))
    caps = zimage.encode_prompts(pipe.tokenizer, pipe.text_encoder, ["a", "b c d"])
    x = [torch.randn(16, 4, 4), torch.randn(16, 4, 6)]
    out = zimage.predict(pipe.transformer, x, torch.tensor([0.2, 0.9]), caps, torch.float32)
    assert [o.shape for o in out] == [(16, 4, 4), (16, 4, 6)]
    alone = zimage.predict(pipe.transformer, x[1:], torch.tensor([0.9]), caps[1:], torch.float32)
    torch.testing.assert_close(out[1], alone[0], rtol=1e-4, atol=1e-5)
