"""Issue 4's switches, each shown to change what it claims: arch presets, network targets and alpha, optimizers,
LR schedules, timestep sampling, loss types, accumulation, EMA, DOP, Differential Guidance, previews, resume."""

import subprocess

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from conftest import ZLORA
from zlora.config import parse_config
from zlora.errors import UserError
from zlora.lora.codecs import write_modules
from zlora.models.load import load_components
from zlora.train.losses import Batch, guided_target, loss_weights, sample_loss
from zlora.train.network import LoraNetwork, target_module_names
from zlora.train.optim import make_optimizer, make_scheduler
from zlora.train.timesteps import sample_sigmas
from zlora.train.trainer import Trainer

DATA = [{"folder_path": "x"}]


def _train_cfg(**kw):
    return parse_config({"train": kw, "datasets": DATA}).train


def test_arch_fills_defaults_explicit_settings_win_and_config_show_prints_them(tmp_path):
    turbo = parse_config({"model": {"arch": "zimage:turbo"}, "datasets": DATA})
    assert turbo.model.name_or_path == "Tongyi-MAI/Z-Image-Turbo"
    assert turbo.model.assistant_lora_path.endswith(
        "zimage_turbo_training_adapter/zimage_turbo_training_adapter_v2.safetensors"
    )
    assert (turbo.sample.sample_steps, turbo.sample.guidance_scale) == (9, 0.0)
    deturbo = parse_config({"model": {"arch": "zimage:deturbo"}, "datasets": DATA})
    assert (deturbo.model.name_or_path, deturbo.model.assistant_lora_path) == (
        "ostris/Z-Image-De-Turbo",
        None,
    )
    assert (deturbo.sample.sample_steps, deturbo.sample.guidance_scale) == (25, 3.0)
    base = parse_config({"datasets": DATA})
    assert (base.model.name_or_path, base.sample.sample_steps, base.sample.guidance_scale) == (
        "Tongyi-MAI/Z-Image",
        30,
        4.0,
    )
    mine = parse_config(
        {
            "model": {"arch": "zimage:turbo", "name_or_path": "/models/zt", "assistant_lora_path": "v1"},
            "sample": {"sample_steps": 4, "guidance_scale": 1.5},
            "datasets": DATA,
        }
    )
    assert mine.model.name_or_path == "/models/zt" and mine.model.assistant_lora_path.endswith(
        "adapter_v1.safetensors"
    )
    assert (mine.sample.sample_steps, mine.sample.guidance_scale) == (4, 1.5)
    no_adapter = parse_config(
        {"model": {"arch": "zimage:turbo", "assistant_lora_path": None}, "datasets": DATA}
    )
    assert no_adapter.model.assistant_lora_path is None
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump({"model": {"arch": "zimage:deturbo"}, "datasets": [{"folder_path": str(tmp_path)}]})
    )
    shown = yaml.safe_load(
        subprocess.run(
            [*ZLORA, "config", "show", str(path)], capture_output=True, text=True, check=True
        ).stdout
    )
    assert (
        shown["model"]["name_or_path"] == "ostris/Z-Image-De-Turbo" and shown["sample"]["sample_steps"] == 25
    )


def test_network_presets_exclude_and_alpha_over_rank(tiny_dir):
    transformer = load_components(tiny_dir, torch.float32, text_encoder=False).transformer
    net = lambda **kw: parse_config({"network": kw, "datasets": DATA}).network  # noqa: E731
    attn = target_module_names(transformer, net(preset="attn"))
    assert len(attn) == 2 * 4 and all(".attention." in n for n in attn)
    adaln = target_module_names(transformer, net(preset="attn_ff_adaln"))
    assert "layers.1.adaLN_modulation.0" in adaln and len(adaln) == 2 * 8
    some = target_module_names(
        transformer, net(target_blocks=["layers", "noise_refiner"], exclude=[r"^layers\.0\."])
    )
    assert {n.split(".")[0] + "." + n.split(".")[1] for n in some} == {"layers.1", "noise_refiner.0"}
    with pytest.raises(UserError, match="leave no module"):
        target_module_names(transformer, net(exclude=["layers"]))

    x = torch.randn(3, 64)
    deltas = {}
    for alpha in (4, 8):
        LoraNetwork(net(linear=4, linear_alpha=alpha)).add(transformer, seed=0)
        q = transformer.get_submodule("layers.0.attention.to_q")
        torch.manual_seed(1)
        q.lora_B["default"].weight.data.normal_(0, 0.05)
        assert q.scaling["default"] == alpha / 4
        with torch.no_grad():
            deltas[alpha] = q(x) - q.base_layer(x)
        transformer.delete_adapters("default")
    torch.testing.assert_close(deltas[8], 2 * deltas[4])  # alpha / rank scales the delta
    assert deltas[4].abs().max() > 1e-3


def _lrs(cfg, steps=12):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.lr)
    sched = make_scheduler(cfg, opt, steps)
    out = []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return np.array(out)


def test_each_lr_schedule_has_its_curve_and_restarts_restart():
    assert np.allclose(_lrs(_train_cfg(lr=1.0)), 1.0)
    warm = _lrs(_train_cfg(lr=1.0, lr_scheduler="constant_with_warmup", lr_warmup_steps=4))
    assert np.allclose(warm[:5], [0, 0.25, 0.5, 0.75, 1]) and np.allclose(warm[4:], 1)
    lin = _lrs(_train_cfg(lr=1.0, lr_scheduler="linear"))
    assert np.allclose(np.diff(lin), -1 / 12) and lin[0] == 1
    cos = _lrs(_train_cfg(lr=1.0, lr_scheduler="cosine"))
    assert np.allclose(cos, 0.5 * (1 + np.cos(np.pi * np.arange(12) / 12)))
    restarts = _lrs(
        _train_cfg(lr=1.0, lr_scheduler="cosine_with_restarts", lr_scheduler_params={"num_cycles": 3})
    )
    assert np.allclose(restarts[[0, 4, 8]], 1.0) and (np.diff(restarts[:4]) < 0).all() and restarts[3] < 0.3
    step = _lrs(_train_cfg(lr=1.0, lr_scheduler="step", lr_scheduler_params={"step_size": 4, "gamma": 0.1}))
    assert np.allclose(step, [1] * 4 + [0.1] * 4 + [0.01] * 4)
    with pytest.raises(UserError, match=r"\['num_cycles'\] do not apply to lr_scheduler linear"):
        _lrs(_train_cfg(lr_scheduler="linear", lr_scheduler_params={"num_cycles": 2}))


@pytest.mark.parametrize("name", ["adamw", "lion", "prodigy", "adafactor", "adamw8bit", "adagrad"])
def test_optimizers_minimise_and_take_their_params(name):
    p = torch.nn.Parameter(torch.full((8,), 3.0))
    lr = {"prodigy": 1.0, "lion": 0.05}.get(name, 0.1)
    opt = make_optimizer(_train_cfg(optimizer=name, lr=lr, weight_decay=0.0), [p])
    for _ in range(60):
        (p**2).sum().backward()
        opt.step()
        opt.zero_grad()
    assert (p**2).sum().item() < 0.5 * 72
    # a key the optimizer does not take is a config error, with the closest name and the list
    with pytest.raises(UserError, match=r"takes no 'no_such_option'; .*it takes: weight_decay"):
        _train_cfg(optimizer=name, optimizer_params={"no_such_option": 1})
    # a value the constructor refuses is still one line naming the field (Adafactor checks none)
    bad = {"adagrad": {"eps": -1.0}, "adafactor": None}.get(name, {"betas": [2.0, 0.9]})
    if bad:
        with pytest.raises(UserError, match=f"optimizer_params` for {name}"):
            make_optimizer(_train_cfg(optimizer=name, optimizer_params=bad), [p])


def test_timestep_samplers_biases_and_bounds():
    def draw(**kw):
        return sample_sigmas(_train_cfg(**kw), 20000, torch.Generator().manual_seed(0), torch.device("cpu"))

    uniform, logit = draw(timestep_type="linear"), draw(timestep_type="sigmoid")
    assert abs(uniform.mean() - 0.5) < 0.01 and abs(uniform.std() - 12**-0.5) < 0.01
    assert abs(logit.mean() - 0.5) < 0.01 and logit.std() < uniform.std() - 0.05  # concentrated in mid noise
    assert draw(timestep_type="shift", timestep_shift=3.0).mean() > 0.65  # flow shift: towards high noise
    for kind in ("linear", "sigmoid"):
        balanced = draw(timestep_type=kind).mean()
        assert draw(timestep_type=kind, timestep_bias="high_noise").mean() > balanced + 0.1
        assert draw(timestep_type=kind, timestep_bias="low_noise").mean() < balanced - 0.1
    bounded = draw(min_timestep=200, max_timestep=600)
    assert bounded.min() >= 0.2 and bounded.max() <= 0.6 and bounded.max() > 0.59
    mid = loss_weights(_train_cfg(timestep_type="mid_weighted"), draw(timestep_type="mid_weighted"))
    assert abs(mid.mean() - 1) < 0.02 and mid.max() <= 1.5
    # ai-toolkit's table: mean 1 over uniform draws, most weight in mid noise, least at the ends
    w = loss_weights(_train_cfg(timestep_type="weighted"), draw(timestep_type="weighted"))
    assert abs(w.mean() - 1) < 0.02 and 1.4 < w.max() < 1.6 and w.min() < 0.5
    assert torch.equal(loss_weights(_train_cfg(), uniform), torch.ones_like(uniform))


def test_loss_types_and_guided_target():
    pred, target = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.1, -2.0, 4.0])
    assert sample_loss(pred, target, _train_cfg()).item() == pytest.approx((0.01 + 4 + 16) / 3)
    assert sample_loss(pred, target, _train_cfg(loss_type="mae")).item() == pytest.approx(6.1 / 3)
    huber = sample_loss(pred, target, _train_cfg(loss_type="huber", huber_delta=1.0)).item()
    assert huber == pytest.approx((0.5 * 0.01 + (2 - 0.5) + (4 - 0.5)) / 3)
    p = torch.tensor([1.0, 2.0])
    assert torch.allclose(guided_target(p, torch.tensor([2.0, 0.0]), 3.0), torch.tensor([4.0, -4.0]))


# --------------------------------------------------------------------------- trainer-level switches
def _trainer(make_config, tmp_path, name="t", **train) -> Trainer:
    cfg = make_config({"job": {"name": name}, "train": {"steps": 3, "lr": 1e-2, **train}})
    t = Trainer(cfg)
    t.setup()
    return t


def _lora(t: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in t.lora_params.items()}


def test_differential_guidance_scale_1_is_plain_training(make_config, tmp_path):
    plain, guided = (
        _trainer(make_config, tmp_path, "a"),
        _trainer(make_config, tmp_path, "b", do_differential_guidance=True, differential_guidance_scale=1.0),
    )
    for t in (plain, guided):
        t.train()
    for (n, a), b in zip(_lora(plain).items(), _lora(guided).values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
    far = _trainer(make_config, tmp_path, "c", do_differential_guidance=True, differential_guidance_scale=3.0)
    far.train()
    assert any(
        (a - b).abs().max() > 1e-4 for a, b in zip(_lora(plain).values(), _lora(far).values(), strict=True)
    )


def test_dop_term_is_zero_for_a_zero_lora_and_pulls_once_it_is_not(make_config, tmp_path):
    t = _trainer(
        make_config, tmp_path, diff_output_preservation=True, diff_output_preservation_class="swatch"
    )
    e = t.data.entries[0]
    assert t.data.class_caption(e) == e.caption.replace("zlr", "swatch") != e.caption
    idx = [0, 1]
    x = [torch.randn(16, 4, 4) for _ in idx]
    sig = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        assert (
            t.objective.dop_loss(idx, x, sig).item() == 0.0
        )  # B = 0 at init: LoRA-on equals LoRA-off exactly
        for n, p in t.transformer.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
        assert t.objective.dop_loss(idx, x, sig).item() > 0
    with pytest.raises(Exception, match="needs a trigger word"):
        make_config({"job": {"trigger_word": None}, "train": {"diff_output_preservation": True}})


def _reg_dataset(tmp_path, **flags) -> dict:
    reg = tmp_path / "reg"
    reg.mkdir(exist_ok=True)
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        Image.new("RGB", (32, 32), colour).save(reg / f"{i}.png")
        (reg / f"{i}.txt").write_text("a plain square")
    return {"folder_path": str(reg), "resolution": 32, "caption_dropout_rate": 0.0, "is_reg": True, **flags}


def test_prior_reg_trains_towards_the_base_model_and_reg_captions_get_no_trigger(make_config, tmp_path):
    base = make_config(as_dict=True)["datasets"][0]

    def trainer(name, **flags):
        t = Trainer(
            make_config(
                {
                    "job": {"name": name},
                    "train": {"steps": 3, "lr": 1e-2},
                    "datasets": [base, _reg_dataset(tmp_path, **flags)],
                }
            )
        )
        t.setup()
        return t

    t = trainer("prior", prior_reg=True)
    reg = [i for i, e in enumerate(t.data.entries) if e.dataset == 1]
    assert reg and all(t.data.entries[i].caption == "a plain square" for i in reg)  # no zlr added
    assert all("zlr" in e.caption for e in t.data.entries if e.dataset == 0)
    x0 = t.data.latents(reg, t.parts.vae)
    noise = [torch.randn_like(x) for x in x0]
    sig = torch.tensor([0.4, 0.8])
    caps = [t.data.embedding(t.data.entries[i].caption) for i in reg]
    with torch.no_grad():
        assert (
            t.loss(Batch(reg, x0, noise, sig, caps)).item() == 0.0
        )  # LoRA B = 0: the prediction is the base's
        for n, p in t.transformer.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
        moved = t.loss(Batch(reg, x0, noise, sig, caps)).item()
        assert moved > 0
    # is_reg alone trains on the image, as any dataset does: its loss is not the distance to the base model
    plain = trainer("plain")
    with torch.no_grad():
        assert plain.loss(Batch(reg, x0, noise, sig, caps)).item() > 0

    # a run on nothing but prior_reg images has nothing to learn: the LoRA stays exactly where it started
    only = Trainer(
        make_config(
            {
                "job": {"name": "only"},
                "train": {"steps": 2, "lr": 1e-2},
                "datasets": [_reg_dataset(tmp_path, prior_reg=True)],
            }
        )
    )
    only.setup()
    start = _lora(only)
    only.train()
    assert all(torch.equal(a, b) for a, b in zip(start.values(), _lora(only).values(), strict=True))


def test_ema_decay_0_equals_raw_weights_and_ema_is_what_is_saved(make_config, tmp_path):
    raw = _trainer(make_config, tmp_path, "raw", ema_config={"use_ema": True, "ema_decay": 0.0})
    raw.train()
    assert all(
        torch.equal(shadow, p) for shadow, p in zip(raw.state.ema.shadow_params, raw.params, strict=True)
    )
    slow = _trainer(make_config, tmp_path, "slow", ema_config={"use_ema": True, "ema_decay": 0.9})
    initial = _lora(slow)
    slow.train()
    for shadow, p, p0 in zip(slow.state.ema.shadow_params, slow.params, initial.values(), strict=True):
        if (p - p0).abs().max() > 1e-6:  # the EMA lags behind the trained weights
            assert (shadow - p).abs().max() > 1e-7 and (shadow - p0).abs().max() > 0
    with slow.ema_weights():
        expected = write_modules(slow.network.export(slow.lora_params, torch.float32), "zlora")
    saved = load_file(slow.save())  # fp32 in tests: the EMA weights, bit for bit
    assert expected.keys() == saved.keys()
    for k, v in expected.items():
        assert torch.equal(saved[k], v), k
    assert all(torch.equal(p, q) for p, q in zip(slow.params, _lora(slow).values(), strict=True))  # restored


def test_gradient_accumulation_2x1_matches_batch_2(make_config, tmp_path):
    """The gradients handed to the optimizer agree (Adam's first update is ~lr x sign(g), which would turn float
    noise in near-zero gradients into +-lr, so the gradients are compared, not the weights)."""
    one = tmp_path / "one"
    one.mkdir()
    Image.new("RGB", (48, 48), (200, 30, 30)).save(one / "a.png")
    (one / "a.txt").write_text("a red square")
    grads = {}
    for name, bs, acc in (("batch", 2, 1), ("accum", 1, 2)):
        cfg = make_config(
            {
                "job": {"name": name},
                "train": {"steps": 2, "batch_size": bs, "gradient_accumulation": acc},
                "datasets": [
                    {"folder_path": str(one), "resolution": 32, "num_repeats": 2, "caption_dropout_rate": 0.0}
                ],
            }
        )
        t = Trainer(cfg)
        t.setup()
        seen = grads[name] = []
        t.state.optimizer.step = lambda t=t, seen=seen: seen.append([p.grad.clone() for p in t.params])
        losses = [t.step_once() for _ in range(2)]
        grads[name + "_loss"] = losses
    assert grads["batch_loss"] == pytest.approx(grads["accum_loss"], rel=1e-5)
    for a, b in zip(
        grads["batch"][0] + grads["batch"][1], grads["accum"][0] + grads["accum"][1], strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert any(g.abs().max() > 1e-4 for g in grads["batch"][0])


def test_resume_restores_optimizer_scheduler_ema_and_data_position(make_config, tmp_path):
    train = {
        "steps": 6,
        "lr_scheduler": "cosine_with_restarts",
        "lr_scheduler_params": {"num_cycles": 2},
        "gradient_accumulation": 2,
        "ema_config": {"use_ema": True, "ema_decay": 0.5},
        "optimizer": "lion",
        "lr": 1e-3,
    }
    whole = Trainer(make_config({"job": {"name": "whole"}, "train": train}))
    whole.setup()
    whole.train()
    cfg = make_config({"job": {"name": "split"}, "train": train})
    first = Trainer(cfg)
    first.setup()
    for _ in range(3):
        first.step_once()
        first.step += 1
    first.save_checkpoint()
    first.cleanup()
    second = Trainer(cfg)
    second.setup()
    assert second.step == 3 and second.state.order.state_dict() == first.state.order.state_dict()
    second.train()
    for a, b in zip(_lora(whole).values(), _lora(second).values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(whole.state.ema.shadow_params, second.state.ema.shadow_params, strict=True):
        assert torch.equal(a, b)


def test_preview_settings_per_prompt_walk_seed_and_network_multiplier(make_config, tmp_path):
    sample = parse_config(
        {
            "datasets": DATA,
            "sample": {
                "prompts": ["a", {"prompt": "b", "width": 64, "seed": 7, "neg": "blurry"}],
                "walk_seed": True,
                "seed": 10,
                "width": 32,
                "height": 48,
            },
        }
    ).sample
    a, b = sample.prompt_list()
    assert (a.width, a.height, a.seed, a.neg) == (32, 48, 10, "") and (b.width, b.height, b.seed, b.neg) == (
        64,
        48,
        7,
        "blurry",
    )

    cfg = {
        "sample": {
            "prompts": ["a colour swatch", {"prompt": "a wide one", "width": 48}],
            "skip_first_sample": True,
            "network_multiplier": 0.0,
        }
    }
    t = Trainer(make_config({"job": {"name": "m0"}, **cfg}))
    t.setup()
    t.sample()
    zero_weight = np.asarray(Image.open(t.run.samples / "step-000000.png"))
    assert zero_weight.shape[1] == 48  # cells as wide as the widest prompt
    with torch.no_grad():
        for n, p in t.transformer.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    t.sample()  # multiplier 0: the perturbed LoRA must not show
    assert np.array_equal(np.asarray(Image.open(t.run.samples / "step-000000.png")), zero_weight)
    t.cfg.sample.network_multiplier = 1.0
    t.sample()
    assert not np.array_equal(np.asarray(Image.open(t.run.samples / "step-000000.png")), zero_weight)
    t.cleanup()
    skipped = Trainer(make_config({"job": {"name": "skip"}, "train": {"steps": 1}, **cfg}))
    skipped.setup()
    skipped.train()
    assert sorted(p.name for p in skipped.run.samples.glob("step-*.png") if "_p" not in p.name) == [
        "step-000001.png"
    ]
