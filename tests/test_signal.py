"""The training signal: Turbo-anchor timesteps (the sampler's own sigmas) and Min-SNR-gamma weighting."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import aitk_job
from zlora.config import parse_config
from zlora.config.aitk import import_aitk
from zlora.train.curves import anchors, snr_weight, timestep_table
from zlora.train.losses import loss_weights
from zlora.train.resume import changes, with_new_defaults
from zlora.train.timesteps import sample_sigmas
from zlora.train.trainer import Trainer

DATA = [{"folder_path": "x"}]


def _train(**kw):
    return parse_config({"model": {"arch": "zimage:turbo"}, "train": kw, "datasets": DATA}).train


def test_anchors_are_the_sigmas_z_images_sampler_visits(tiny_dir):
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = json.loads((tiny_dir / "scheduler" / "scheduler_config.json").read_text())
    for steps in (9, 4, 25):
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        # what ZImagePipeline does: sigmas linspace(1, 1/N, N), the scheduler shifts them (mu is unused here)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps).tolist(), mu=0.5)
        train = _train(timestep_type="turbo_anchors", anchor_steps=steps)
        np.testing.assert_allclose(anchors(train), scheduler.sigmas[:-1].numpy(), rtol=1e-6)
    # unset, the anchors follow the previews' sampler steps of the architecture (Turbo: 9)
    assert _train(timestep_type="turbo_anchors").anchor_steps == 9


def test_turbo_anchor_draws_jitter_and_mix():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    exact = _train(timestep_type="turbo_anchors", anchor_jitter=0.0)
    a = torch.tensor(anchors(exact), dtype=torch.float32)
    s = sample_sigmas(exact, 4000, g(), torch.device("cpu"))
    nearest = (s[:, None] - a[None]).abs().min(dim=1).values
    assert nearest.max() < 1e-6 and len(torch.unique(s)) == len(a)  # every anchor, nothing else
    jittered = sample_sigmas(_train(timestep_type="turbo_anchors"), 4000, g(), torch.device("cpu"))
    off = (jittered[:, None] - a[None]).abs().min(dim=1).values
    assert 0.005 < off.mean() < 0.03  # jitter 0.02 around the anchors (minus the clipped top anchor's half)
    mixed = sample_sigmas(
        _train(timestep_type="turbo_anchors", anchor_mix=0.5, anchor_jitter=0.0), 4000, g(), "cpu"
    )
    share = ((mixed[:, None] - a[None]).abs().min(dim=1).values > 1e-6).float().mean()
    assert 0.45 < share < 0.55
    assert torch.equal(s, sample_sigmas(exact, 4000, g(), torch.device("cpu")))  # deterministic from the seed
    # the curve `zlora config timesteps` draws: mass only around the anchors
    table = timestep_table(exact)
    t_with_mass = [t for t, d in zip(table["t"], table["density"], strict=True) if d > 0]
    assert t_with_mass and all(np.min(np.abs(a.numpy() * 1000 - t)) <= 25 for t in t_with_mass)


def test_min_snr_gamma_weights():
    s = np.array([0.5, 0.25, 0.1, 0.01, 0.9, 1.0])
    # SNR = ((1-s)/s)^2: 1, 9, 81, 9801, 1/81, 0 -> max(min(SNR, 5)/(SNR + 1), 0.1) (None's v_prediction form)
    expected = [0.5, 0.5, 0.1, 0.1, 0.1, 0.1]
    np.testing.assert_allclose(snr_weight(s, 5.0), expected, rtol=1e-6)
    np.testing.assert_allclose(snr_weight(np.array([0.6]), 5.0), [(4 / 9) / (4 / 9 + 1)], rtol=1e-6)
    sig = torch.tensor(s, dtype=torch.float32)
    plain = loss_weights(_train(timestep_type="weighted"), sig)
    both = loss_weights(_train(timestep_type="weighted", snr_gamma=5.0), sig)
    torch.testing.assert_close(both, plain * torch.tensor(expected))
    assert torch.equal(loss_weights(_train(), sig), torch.ones(6))
    table = timestep_table(_train(timestep_type="linear", snr_gamma=5.0))
    assert table["weight"][table["t"].index(250)] == 0.5
    # ai-toolkit's min_snr_gamma / snr_gamma import to it
    for key in ("snr_gamma", "min_snr_gamma"):
        assert import_aitk(aitk_job(train={key: 5}))[0]["train"]["snr_gamma"] == 5


def test_a_run_with_anchors_and_min_snr_trains_and_an_older_checkpoint_still_resumes(make_config):
    cfg = make_config({"train": {"steps": 3, "timestep_type": "turbo_anchors", "snr_gamma": 5.0}})
    assert cfg.train.anchor_steps == cfg.sample.sample_steps == 2
    t = Trainer(cfg)
    t.setup()
    t.train()
    assert all(torch.isfinite(v).all() for v in t.lora_params.values())
    # a checkpoint written before these settings existed: they are not "changed settings"
    new = cfg.model_dump(mode="json")
    old = json.loads(json.dumps(new))
    for key in ("anchor_steps", "anchor_jitter", "anchor_mix", "snr_gamma"):
        old["train"].pop(key)
    old["train"]["timestep_type"], new["train"]["timestep_type"] = "sigmoid", "sigmoid"
    new["train"]["snr_gamma"] = None
    assert changes(with_new_defaults(old), new) == {}
    assert "train.anchor_jitter" in changes(old, new)  # what it was before: a new option blocked the resume


@pytest.mark.parametrize("bad", [{"anchor_jitter": -0.1}, {"anchor_mix": 1.5}, {"snr_gamma": 0}])
def test_bad_signal_settings_name_the_field(bad):
    from zlora.errors import UserError

    with pytest.raises(UserError, match=f"train.{next(iter(bad))}"):
        _train(**bad)


def test_validation_loss_at_fixed_inputs_is_logged_and_falls_as_the_lora_learns(make_config, tmp_path):
    """Train on one image, validate on three like it: the held-out loss is logged at step 0, every 4 steps and at
    the end, falls as the LoRA learns what the images share, and sees the same inputs at every evaluation (two
    evaluations of the same weights agree exactly). (The turn of an over-trained run did not show on the tiny
    model within 600 steps; not asserted.)"""
    from PIL import Image

    from zlora.runfolder import read_metrics

    train_dir, held_dir = tmp_path / "train", tmp_path / "held"
    for folder, colors in (
        (train_dir, [(200, 40, 40)]),
        (held_dir, [(190, 60, 50), (210, 50, 30), (180, 40, 60)]),
    ):
        folder.mkdir()
        for i, c in enumerate(colors):
            im = Image.new("RGB", (48, 48), c)
            im.paste((255, 255, 255), (8 + 6 * i, 8, 24 + 6 * i, 24))
            im.save(folder / f"{i}.png")
            (folder / f"{i}.txt").write_text("a red square")
    held = {"folder_path": str(held_dir), "resolution": 32, "caption_dropout_rate": 0.0}
    cfg = make_config(
        {
            "train": {"steps": 40, "lr": 3e-2, "batch_size": 1},
            "datasets": [{"folder_path": str(train_dir), "resolution": 32, "caption_dropout_rate": 0.0}],
            "validation": {"every": 4, "datasets": [held], "sigmas": [0.3, 0.6, 0.9]},
        }
    )
    t = Trainer(cfg)
    t.setup()
    assert t.validation.loss(t.transformer, t.parts.vae) == t.validation.loss(t.transformer, t.parts.vae)
    t.train()
    t.save()
    val = [r for r in read_metrics(t.run.metrics) if "val_loss" in r]
    assert [r["step"] for r in val] == list(range(0, 41, 4))
    losses = [r["val_loss"] for r in val]
    assert losses[-1] < 0.97 * losses[0], losses  # measured: 1.452 -> ~1.30 over 40 steps
    assert len(set(losses)) == len(losses)  # each evaluation saw the LoRA of its step


def test_validation_needs_its_datasets():
    from zlora.errors import UserError

    with pytest.raises(
        UserError, match="validation.every` needs held-out images: validation.datasets, or vali"
    ):
        parse_config({"validation": {"every": 10}, "datasets": DATA})
    with pytest.raises(UserError, match="validation.split` holds images out for nothing"):
        parse_config({"validation": {"split": 0.2}, "datasets": DATA})
    with pytest.raises(UserError, match="validation.sigmas"):
        parse_config({"validation": {"sigmas": [0.0]}, "datasets": DATA})


def test_drift_score_of_prompts_without_the_trigger(make_config):
    from PIL import Image

    from zlora.runfolder import read_metrics
    from zlora.train.drift import ssim

    a = Image.effect_noise((32, 32), 40).convert("RGB")
    assert ssim(a, a) == pytest.approx(1.0) and ssim(a, Image.new("RGB", (32, 32), "white")) < 0.5
    sample = {"prompts": ["zlr, a red square", "a blue circle"], "sample_every": 2, "seed": 3}
    cfg = make_config({"train": {"steps": 4, "lr": 5e-2}, "sample": sample})
    t = Trainer(cfg)
    t.setup()
    t.train()
    rows = [r for r in read_metrics(t.run.metrics) if "drift" in r]
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:  # only the prompt without the trigger, against its own step-0 image
        assert [p["prompt"] for p in r["drift"]["prompts"]] == ["a blue circle"]
        assert r["drift"]["worst"]["prompt"] == "a blue circle" and 0 <= r["drift"]["mean"] <= 2
    first = Image.open(next(t.run.samples.glob("step-000000_p1_s*.png")))
    last = Image.open(next(t.run.samples.glob("step-000004_p1_s*.png")))
    assert rows[-1]["drift"]["mean"] == round(1 - ssim(first, last), 4)
    assert rows[-1]["drift"]["mean"] > 0  # a LoRA at this lr moves them


def test_validation_loss_falls_then_rises_when_two_images_are_over_trained(make_config, tmp_path):
    """builtin:shapes learns the star from two pictures: the held-out stars' loss falls while the LoRA learns what
    a star is, then rises as it learns those two pictures by heart (the training loss keeps falling). Measured
    (lr 6e-3, rank 8, batch 1, every 15 steps): 0.1643 at step 0, 0.1576 at step 45, 0.18-0.19 from step 180 on."""
    import shutil

    from zlora.runfolder import read_metrics
    from zlora.train.validation import Validation

    stars = sorted((Path(__file__).parent.parent / "examples" / "stars").glob("*.png"))
    train_dir, held_dir = tmp_path / "train", tmp_path / "held"
    for folder, files in ((train_dir, stars[:2]), (held_dir, stars[2:6])):
        folder.mkdir()
        for f in files:
            shutil.copy(f, folder)
            shutil.copy(f.with_suffix(".txt"), folder)
    ds = {"resolution": 64, "caption_dropout_rate": 0.0}
    cfg = make_config(
        {
            "model": {"name_or_path": "builtin:shapes", "dtype": "fp32"},
            "network": {"linear": 8, "linear_alpha": 8},
            "train": {"steps": 240, "lr": 6e-3, "batch_size": 1},
            "datasets": [{"folder_path": str(train_dir), "cache_latents": True, **ds}],
            "validation": {
                "every": 30,
                "datasets": [{"folder_path": str(held_dir), **ds}],
                "sigmas": [0.5, 0.7, 0.9],
            },
        }
    )
    t = Trainer(cfg)
    t.setup()
    # the same fixed-input loss on the two training pictures: it keeps falling (over-fitting, not diverging)
    from zlora.config.schema import DatasetConfig

    on_train = cfg.validation.model_copy(
        update={"datasets": [DatasetConfig(folder_path=str(train_dir), **ds)]}
    )
    probe = Validation(cfg.model_copy(update={"validation": on_train}), t.model_ref.folder, t.device, t.dtype)
    probe.prepare(t.parts.vae, t._text_encoder)
    before = probe.loss(t.transformer, t.parts.vae)
    t.train()
    val = [r["val_loss"] for r in read_metrics(t.run.metrics) if "val_loss" in r]
    turn = val.index(min(val))
    assert 0 < turn < len(val) - 1, val
    assert min(val) < 0.97 * val[0] and val[-1] > 1.1 * min(val), val
    after = probe.loss(t.transformer, t.parts.vae)
    assert after < 0.7 * before, (before, after)


def test_validation_split_holds_images_out_of_training(make_config, tmp_path, tiny_dir):
    from PIL import Image

    from zlora.data.loader import TrainData
    from zlora.train.validation import Validation

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (32, 32), (30 * i, 100, 200 - 20 * i)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"swatch {i}")
    ds = [{"folder_path": str(folder), "resolution": 32, "caption_dropout_rate": 0.0}]
    cfg = make_config({"datasets": ds, "validation": {"every": 2, "split": 0.25}})
    cpu = torch.device("cpu")
    trained = {e.image.name for e in TrainData(cfg, tiny_dir, cpu).entries}
    held = {e.image.name for e in Validation(cfg, tiny_dir, cpu, torch.float32).data.entries}
    assert len(held) == 2 and not trained & held and trained | held == {f"{i}.png" for i in range(8)}
    again = Validation(cfg, tiny_dir, cpu, torch.float32).data.entries
    assert {e.image.name for e in again} == held  # the same split every run
    assert "validation.split" in changes(
        cfg.model_dump(), make_config({"datasets": ds, "validation": {"every": 2, "split": 0.5}}).model_dump()
    )
    assert not changes(
        cfg.model_dump(),
        make_config({"datasets": ds, "validation": {"every": 7, "split": 0.25}}).model_dump(),
    )
