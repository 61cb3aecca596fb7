import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from zlora.lora.codecs import read_modules
from zlora.lora.file import read_lora
from zlora.models import zimage
from zlora.models.load import load_components
from zlora.train.trainer import Trainer, run_training


def _setup(cfg) -> Trainer:
    t = Trainer(cfg)
    t.setup()
    return t


def _fixed_loss(t: Trainer) -> float:
    """Loss at fixed sigmas and noise over the whole dataset: comparable before and after training."""
    g = torch.Generator().manual_seed(123)
    losses = []
    with torch.no_grad():
        for i, e in enumerate(t.data.entries):
            (x0,), cap = t.data.latents([i], t.parts.vae), t.data.embedding(e.caption)
            for s in (0.25, 0.5, 0.75):
                noise = torch.randn(x0.shape, generator=g)
                x_s = zimage.noisy_latents(x0, noise, torch.tensor(s))
                (pred,) = zimage.predict(t.transformer, [x_s], torch.tensor([s]), [cap], t.dtype)
                losses.append(torch.mean((pred - zimage.velocity_target(x0, noise)) ** 2).item())
    return float(np.mean(losses))


def test_lora_with_zero_B_leaves_the_transformer_output_unchanged(make_config, tiny_dir):
    t = _setup(make_config())
    plain = load_components(tiny_dir, torch.float32, torch.device("cpu")).transformer
    x = [torch.randn(16, 4, 4)]
    sig, cap = torch.tensor([0.4]), [t.data.embedding(t.data.entries[0].caption)]
    lora_A = [p for n, p in t.transformer.named_parameters() if "lora_A" in n]
    lora_B = [p for n, p in t.transformer.named_parameters() if "lora_B" in n]
    assert lora_A and all(a.abs().sum() > 0 for a in lora_A) and all(b.abs().sum() == 0 for b in lora_B)
    with torch.no_grad():
        before = zimage.predict(plain, x, sig, cap, torch.float32)[0]
        with_zero_lora = zimage.predict(t.transformer, x, sig, cap, torch.float32)[0]
        assert torch.equal(before, with_zero_lora)
        for b in lora_B:
            b.normal_(0, 0.1)
        changed = zimage.predict(t.transformer, x, sig, cap, torch.float32)[0]
    assert (changed - before).abs().max() > 1e-4


def test_training_lowers_the_loss_on_a_memorisation_set(make_config):
    t = _setup(
        make_config(
            {
                "train": {"steps": 80, "batch_size": 4, "lr": 1e-2, "timestep_type": "linear"},
                "network": {"linear": 8, "linear_alpha": 8},
            }
        )
    )
    before = _fixed_loss(t)
    t.train()
    after = _fixed_loss(t)
    t.cleanup()
    # Flow matching with fresh noise has an irreducible floor: measured 1.437 -> 1.245 (0.87x) on this set.
    assert after < 0.92 * before, (before, after)


def test_a_saved_lora_loads_in_diffusers_and_reproduces_the_trainers_output(make_config, tiny_dir):
    from diffusers import ZImagePipeline

    cfg = make_config(
        {
            "train": {"steps": 3, "lr": 2e-2},
            "save": {"dtype": "fp32"},
            "network": {"linear": 4, "linear_alpha": 2},
        }
    )
    t = _setup(cfg)
    t.train()
    path = t.save()
    prompt, kw = (
        "a colour swatch",
        dict(height=32, width=32, num_inference_steps=3, guidance_scale=0.0, output_type="np"),
    )
    with torch.no_grad():
        t.transformer.eval()
        (embed,) = zimage.encode_prompts(*_text_parts(tiny_dir), [prompt])
        ours = t.pipe(prompt_embeds=[embed], generator=torch.Generator().manual_seed(7), **kw).images
    t.cleanup()

    pipe = ZImagePipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    without = pipe(prompt, generator=torch.Generator().manual_seed(7), **kw).images
    pipe.load_lora_weights(str(path))
    theirs = pipe(prompt, generator=torch.Generator().manual_seed(7), **kw).images
    np.testing.assert_allclose(theirs, ours, atol=2e-5, rtol=0)
    assert np.abs(theirs - without).max() > 1e-3


def _text_parts(tiny_dir):
    parts = load_components(tiny_dir, torch.float32, torch.device("cpu"))
    return parts.tokenizer, parts.text_encoder


def test_run_folder_holds_lora_checkpoints_metrics_plot_and_previews(make_config):
    cfg = make_config(
        {
            "train": {"steps": 5},
            "save": {"save_every": 2, "max_step_saves_to_keep": 2, "dtype": "bf16"},
            "sample": {
                "sample_every": 5,
                "prompts": ["one", "two"],
                "samples_per_prompt": 2,
                "guidance_scale": 2.0,
                "neg": "blurry",
            },
        }
    )
    lora = run_training(cfg)
    run = lora.parent
    assert lora.name == "t.safetensors"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000004", "step-000005"]
    assert not list((run / "checkpoints").glob(".*")), "no temporary leftovers"
    every = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in every if "drift" not in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and all(
        {"loss", "lr", "seconds"} <= r.keys() for r in rows
    )
    assert [r["step"] for r in every if "drift" in r] == [
        5
    ]  # the preview's drift score (no trigger word here)
    assert Image.open(run / "loss.png").size[0] > 100
    grid = Image.open(run / "samples" / "step-000005.png")
    assert grid.size[0] == 2 * 32 and grid.size[1] > 2 * 32  # 2 seeds wide, 2 prompt rows plus labels
    assert (run / "samples" / "step-000000.png").is_file() and (
        run / "samples" / "step-000005_p1_s43.png"
    ).is_file()
    files = json.loads((run / "run.json").read_text())["base_model"]["files"]
    assert (run / "config.yaml").is_file() and files["transformer/config.json"]["size"] > 0

    tensors, meta = read_lora(lora)
    assert meta["format"] == "zlora" and meta["trigger_word"] == "zlr" and meta["step"] == "5"
    keys = set(tensors)
    assert "diffusion_model.layers.0.attention.to_q.lora_A.weight" in keys
    assert "diffusion_model.layers.1.feed_forward.w3.lora_B.weight" in keys
    assert float(tensors["diffusion_model.layers.0.attention.to_q.alpha"]) == 4.0
    assert not any("refiner" in k for k in keys), "default targets are the main layers only"
    assert tensors["diffusion_model.layers.0.attention.to_q.lora_A.weight"].dtype == torch.bfloat16
    assert len(read_modules(tensors)) == 2 * 7


def test_resume_after_raising_steps_equals_an_uninterrupted_run(make_config, tmp_path):
    full = run_training(make_config({"train": {"steps": 6}, "save": {"save_every": 3}}))
    first = make_config({"train": {"steps": 3}, "save": {"save_every": 3}, "job": {"name": "t2"}})
    run_training(first)
    resumed = run_training(first.model_copy(update={"train": first.train.model_copy(update={"steps": 6})}))
    _assert_same_lora(full, resumed)
    rows = (resumed.parent / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_different_network(make_config):
    from zlora.errors import UserError

    run_training(make_config({"train": {"steps": 2}}))
    with pytest.raises(UserError, match="network.linear: 4 -> 8"):
        run_training(make_config({"train": {"steps": 4}, "network": {"linear": 8, "linear_alpha": 8}}))


def _assert_same_lora(a, b):
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        assert set(fa.keys()) == set(fb.keys())
        for k in fa.keys():
            assert torch.equal(fa.get_tensor(k), fb.get_tensor(k)), k


def test_bad_optimizer_params_are_a_user_error(make_config):
    from zlora.errors import UserError

    with pytest.raises(
        UserError, match=r"train.optimizer_params.*adamw takes no 'betass'; did you mean 'betas'"
    ):
        _setup(make_config({"train": {"optimizer_params": {"betass": 0.9}}}))  # caught as the config is read
    with pytest.raises(UserError, match=r"`train.optimizer_params` for adamw: .*beta"):
        _setup(
            make_config({"train": {"optimizer_params": {"betas": [1.5, 0.9]}}})
        )  # refused by the constructor
