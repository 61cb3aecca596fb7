"""Every optimizer the guide and ai-toolkit name: each trains 20 steps on the tiny model on CPU and resumes
bit-identically; the two zlora implements (automagic, prodigy8bit) against steps computed by hand / by the
maintained library; the parameter names each takes against the real constructors."""

import importlib
import inspect
import math

import numpy as np
import pytest
import torch

from conftest import aitk_job
from zlora.config import parse_config
from zlora.config.aitk import import_aitk
from zlora.config.optimizers import ALIASES, OPTIMIZERS
from zlora.errors import UserError
from zlora.train.automagic import Automagic
from zlora.train.optim8 import Prodigy8bit
from zlora.train.trainer import Trainer

LR = {"prodigy": 1.0, "prodigy8bit": 1.0, "automagic": 1e-4}


def test_the_table_names_only_parameters_the_constructors_take():
    for name, opt in OPTIMIZERS.items():
        cls = getattr(importlib.import_module(opt.module), opt.cls)
        takes = set(inspect.signature(cls.__init__).parameters)
        if name == "prodigy8bit":  # its own min_8bit_size, the rest passed on to prodigyopt's Prodigy
            takes |= set(inspect.signature(cls.__mro__[1].__init__).parameters)
        assert {"lr", "weight_decay", *opt.params} <= takes, (name, set(opt.params) - takes)


def test_optimizer_params_typos_and_aliases_are_caught_when_the_config_is_read():
    data = {"datasets": [{"folder_path": "x"}]}
    with pytest.raises(UserError, match=r"adamw takes no 'beta'; did you mean 'betas'\?"):
        parse_config({**data, "train": {"optimizer": "adamw", "optimizer_params": {"beta": [0.9, 0.99]}}})
    with pytest.raises(UserError, match=r"'lr': set train.lr instead"):
        parse_config({**data, "train": {"optimizer": "lion", "optimizer_params": {"lr": 1e-4}}})
    for alias, name in ALIASES.items():
        assert parse_config({**data, "train": {"optimizer": alias.upper()}}).train.optimizer == name


def _trainer(make_config, name: str, opt: str, steps: int = 20) -> Trainer:
    params = {"min_8bit_size": 1} if opt in ("prodigy8bit", "adamw8bit", "adam8bit", "lion8bit") else {}
    cfg = make_config(
        {
            "job": {"name": name},
            "train": {"steps": steps, "optimizer": opt, "lr": LR.get(opt, 1e-3), "optimizer_params": params},
        }
    )
    t = Trainer(cfg)
    t.setup()
    return t


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_each_optimizer_trains_20_steps_on_cpu_and_resumes_exactly(make_config, opt):
    whole = _trainer(make_config, "whole", opt)
    before = {k: v.detach().clone() for k, v in whole.lora_params.items()}
    whole.train()
    after = {k: v.detach().clone() for k, v in whole.lora_params.items()}
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    first = _trainer(make_config, "split", opt)
    for _ in range(10):
        first.step_once()
        first.step += 1
    first.save_checkpoint()
    first.cleanup()
    second = _trainer(make_config, "split", opt)
    assert second.step == 10
    second.train()
    for k, v in second.lora_params.items():
        assert torch.equal(v, after[k]), (opt, k)
    # and ai-toolkit's job with this name imports to it
    assert import_aitk(aitk_job(train={"optimizer": opt}))[0]["train"]["optimizer"] == opt


def test_automagic_against_a_step_computed_by_hand():
    w = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
    v = np.array([0.3, -0.2])
    w0, v0 = w.copy(), v.copy()
    grads = [
        (np.array([[0.1, -0.4, 0.2], [0.3, 0.05, -0.6]]), np.array([0.5, -0.1])),
        (np.array([[0.2, 0.4, -0.2], [0.1, -0.05, -0.3]]), np.array([0.4, 0.2])),
    ]
    lr, bump, lo, hi, eps, beta2, wd, clip = 1e-3, 2e-4, 1e-4, 2e-3, 1e-30, 0.9, 0.1, 1.0
    pw, pv = torch.nn.Parameter(torch.tensor(w)), torch.nn.Parameter(torch.tensor(v))
    opt = Automagic(
        [pw, pv], lr=lr, lr_bump=bump, min_lr=lo, max_lr=hi, eps=(eps, 1e-3), beta2=beta2, weight_decay=wd
    )
    row, col, sq = np.zeros(2), np.zeros(3), np.zeros(2)
    mask_w, mask_v = np.full(w.shape, lr), np.full(v.shape, lr)
    pol_w, pol_v = np.zeros(w.shape, bool), np.zeros(v.shape, bool)

    def clipped(u):
        return u / max(1.0, math.sqrt((u**2).mean()) / clip)

    for gw, gv in grads:
        pw.grad, pv.grad = torch.tensor(gw), torch.tensor(gv)
        opt.step()
        row = beta2 * row + (1 - beta2) * (gw**2 + eps).mean(axis=1)
        col = beta2 * col + (1 - beta2) * (gw**2 + eps).mean(axis=0)
        uw = clipped(gw / np.sqrt(np.outer(row / row.mean(), col)))
        sq = beta2 * sq + (1 - beta2) * (gv**2 + eps)
        uv = clipped(gv / np.sqrt(sq))
        mask_w = np.clip(np.where((uw > 0) == pol_w, mask_w + bump, mask_w - bump), lo, hi)
        mask_v = np.clip(np.where((uv > 0) == pol_v, mask_v + bump, mask_v - bump), lo, hi)
        pol_w, pol_v = uw > 0, uv > 0
        w = w - w * wd * mask_w - uw * mask_w
        v = v - v * wd * mask_v - uv * mask_v
    # the steps (the optimizer computes in fp32) to 1e-5 of their size
    np.testing.assert_allclose(pw.detach().numpy() - w0, w - w0, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(pv.detach().numpy() - v0, v - v0, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(opt.state[pw]["lr_mask"].numpy(), mask_w, rtol=1e-6)


def test_prodigy8bit_is_prodigy_with_8bit_states():
    from prodigyopt import Prodigy

    torch.manual_seed(0)
    start = torch.randn(64, 96)
    grads = [torch.randn(64, 96) for _ in range(4)]
    a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    ref, ours = Prodigy([a], lr=1.0), Prodigy8bit([b], lr=1.0, min_8bit_size=1)
    for i, g in enumerate(grads):
        a.grad, b.grad = g.clone(), g.clone()
        ref.step()
        ours.step()
        if i == 0:
            assert torch.equal(a, b)  # the first step is Prodigy's exactly (fresh states)
    state = ours.state[b]
    assert state["exp_avg.q"].dtype == torch.uint8 and "exp_avg" not in state and "exp_avg_sq.q" in state
    assert torch.allclose(a, b, rtol=0.05, atol=0.05 * a.abs().mean().item())  # 8-bit rounding only
    assert not torch.equal(a, b)
