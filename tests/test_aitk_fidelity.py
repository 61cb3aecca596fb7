"""An ai-toolkit job trains in zlora what it trains in ai-toolkit. The jobs here are built the way ai-toolkit's UI
exports them (ui/src/app/jobs/new/jobConfig.ts defaults + the Z-Image architectures' defaults of options.ts); the
expected schedules, weights and optimizer settings are ai-toolkit's formulas (toolkit/scheduler.py,
toolkit/optimizer.py, its `weighted` table), computed here independently of zlora's code."""

from __future__ import annotations

import copy
import json
import math
import subprocess

import pytest
import torch
import yaml

from conftest import REPO, ZLORA
from zlora.config import parse_config
from zlora.config.aitk import import_aitk
from zlora.train.optim import make_scheduler

ADAPTER = "ostris/zimage_turbo_training_adapter/zimage_turbo_training_adapter_v2.safetensors"
ARCHS = {  # options.ts: what choosing the architecture sets
    "zimage:turbo": {"name_or_path": "Tongyi-MAI/Z-Image-Turbo", "assistant_lora_path": ADAPTER,
                     "guidance_scale": 1, "sample_steps": 8},
    "zimage:deturbo": {"name_or_path": "ostris/Z-Image-De-Turbo", "extras_name_or_path": "Tongyi-MAI/Z-Image-Turbo",
                       "guidance_scale": 3, "sample_steps": 25},
    "zimage": {"name_or_path": "Tongyi-MAI/Z-Image", "sample_steps": 30},
}  # fmt: skip
# The UI's optimizer choices and ai-toolkit's scheduler names (toolkit/scheduler.py)
UI_OPTIMIZERS = ["adafactor", "adam", "adamw", "adamw8bit", "automagic", "automagic2", "automagic3", "prodigyopt",
                 "prodigy8bit", "adam8", "adamw8", "lion", "lion8bit", "adagrad", "ademamix8bit"]  # fmt: skip
SCHEDULERS = ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "step"]


def ui_job(arch: str, **train) -> dict:
    """A job as ai-toolkit's UI exports it for ``arch``."""
    a = ARCHS[arch]
    model = {"name_or_path": a["name_or_path"], "quantize": True, "qtype": "qfloat8", "quantize_te": True,
             "qtype_te": "qfloat8", "arch": arch, "low_vram": True, "model_kwargs": {}, "layer_offloading": False,
             "compile": False, **({"assistant_lora_path": a["assistant_lora_path"]} if "assistant_lora_path" in a else {}),
             **({"extras_name_or_path": a["extras_name_or_path"]} if "extras_name_or_path" in a else {})}  # fmt: skip
    return {
        "job": "extension",
        "config": {"name": "my_first_lora_v1", "process": [{
            "type": "diffusion_trainer", "training_folder": "output", "sqlite_db_path": "./aitk_db.db", "device": "cuda",
            "trigger_word": None, "performance_log_every": 10,
            "network": {"type": "lora", "linear": 32, "linear_alpha": 16, "conv": 16, "conv_alpha": 16,
                        "lokr_full_rank": True, "lokr_factor": -1, "network_kwargs": {"ignore_if_contains": []}},
            "save": {"dtype": "bf16", "save_every": 250, "max_step_saves_to_keep": 4, "save_format": "diffusers",
                     "push_to_hub": False},
            "datasets": [{"folder_path": "/path/to/images/folder", "control_path": None, "mask_path": None,
                          "mask_min_value": 0.1, "default_caption": "", "caption_ext": "txt",
                          "caption_dropout_rate": 0.05, "cache_latents_to_disk": False, "is_reg": False,
                          "network_weight": 1, "resolution": [512, 768, 1024], "controls": [],
                          "shrink_video_to_frames": True, "num_frames": 1, "do_i2v": True, "flip_x": False,
                          "flip_y": False}],
            "train": {"batch_size": 1, "bypass_guidance_embedding": True, "steps": 3000, "gradient_accumulation": 1,
                      "train_unet": True, "train_text_encoder": False, "gradient_checkpointing": True,
                      "noise_scheduler": "flowmatch", "optimizer": "adamw8bit", "timestep_type": "weighted",
                      "content_or_style": "balanced", "optimizer_params": {"weight_decay": 1e-4},
                      "unload_text_encoder": False, "cache_text_embeddings": False, "lr": 0.0001,
                      "ema_config": {"use_ema": False, "ema_decay": 0.99}, "skip_first_sample": False,
                      "force_first_sample": False, "disable_sampling": False, "dtype": "bf16",
                      "diff_output_preservation": False, "diff_output_preservation_multiplier": 1.0,
                      "diff_output_preservation_class": "person", "switch_boundary_every": 1, "loss_type": "mse",
                      **train},
            "logging": {"log_every": 1, "use_ui_logger": True},
            "model": model,
            "sample": {"sampler": "flowmatch", "sample_every": 250, "width": 1024, "height": 1024,
                       "samples": [{"prompt": "woman with red hair, playing chess at the park"}], "neg": "",
                       "seed": 42, "walk_seed": True, "guidance_scale": a.get("guidance_scale", 4),
                       "sample_steps": a["sample_steps"], "num_frames": 1, "fps": 1, "sample_start_step": 0},
        }]},
        "meta": {"name": "[name]", "version": "1.0"},
    }  # fmt: skip


def _import(tmp_path, job: dict, name: str = "job"):
    """`zlora config import` as a user runs it: (exit code, stderr, resolved config or None)."""
    src, out = tmp_path / f"{name}.yaml", tmp_path / f"{name}.zlora.yaml"
    src.write_text(yaml.safe_dump(job))
    r = subprocess.run(
        [*ZLORA, "config", "import", str(src), "-o", str(out)], capture_output=True, text=True, cwd=REPO
    )
    cfg = parse_config(yaml.safe_load(out.read_text())) if r.returncode == 0 else None
    return r.returncode, r.stderr, cfg


@pytest.mark.parametrize("arch", list(ARCHS))
def test_a_ui_job_of_each_architecture_imports_and_trains_adaln_at_alpha_rank(arch, tmp_path):
    code, err, cfg = _import(tmp_path, ui_job(arch), arch.replace(":", "_"))
    assert code == 0, err
    assert "not a setting" not in err and "Traceback" not in err
    assert "adaLN_modulation.0" in cfg.network.target_modules and cfg.network.target_blocks == ["layers"]
    assert (cfg.network.linear, cfg.network.linear_alpha) == (32, 32)
    assert "linear_alpha 16 -> 32: ai-toolkit trains Z-Image LoRAs at alpha = rank" in err
    assert cfg.model.arch == arch and cfg.model.name_or_path == ARCHS[arch]["name_or_path"]
    assert cfg.train.timestep_type == "weighted" and cfg.train.optimizer == "adamw8bit"
    assert cfg.train.optimizer_params == {"eps": 1e-6}  # what ai-toolkit passes to every Adam
    for key in ("model.compile -> train.compile", "sample.sample_start_step: no zlora equivalent"):
        assert key in err
    if arch == "zimage:deturbo":
        assert "model.extras_name_or_path: no zlora equivalent" in err


@pytest.mark.parametrize("name", UI_OPTIMIZERS)
def test_every_optimizer_name_of_the_ui_imports_to_one_zlora_has(name, tmp_path):
    code, err, cfg = _import(tmp_path, ui_job("zimage:turbo", optimizer=name), name)
    assert code == 0, err
    if name == "prodigyopt":
        assert cfg.train.optimizer == "prodigy" and cfg.train.lr == 1.0  # ai-toolkit: lr < 0.1 means 1
    if name in ("adamw8", "adamw8bit"):
        assert cfg.train.optimizer == "adamw8bit"
    if name in ("adam8", "adam", "adagrad", "ademamix8bit", "prodigy8bit", "automagic"):
        assert cfg.train.optimizer == {"adam8": "adam8bit"}.get(name, name)  # each its own optimizer now
    if cfg.train.optimizer != name and name not in ("prodigyopt", "adamw8"):
        assert f"train.optimizer: {name} -> {cfg.train.optimizer}" in err  # a name we lack says the closest


def _aitk_lr(name: str, params: dict, steps: int, lr: float, at: int) -> float:
    """ai-toolkit's get_lr_scheduler(name, **params, total_iters=steps) after ``at`` steps, from its formulas."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    kw = {**params, "total_iters": steps}
    if name == "linear":
        sched = torch.optim.lr_scheduler.LinearLR(opt, **kw)
    elif name == "constant":
        sched = torch.optim.lr_scheduler.ConstantLR(opt, **{"factor": 1.0, **kw})
    elif name == "constant_with_warmup":
        from diffusers.optimization import get_constant_schedule_with_warmup

        sched = get_constant_schedule_with_warmup(opt, num_warmup_steps=params.get("num_warmup_steps", 1000))
    elif name == "cosine_with_restarts":
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            opt, T_0=steps, eta_min=params.get("eta_min", 0)
        )
    elif name == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, **params)
    else:  # cosine: ai-toolkit's own lambda
        warm, eta = params.get("num_warmup_steps", 0), params.get("eta_min", 0.0)
        decay = params.get("cosine_decay_steps", steps)

        def f(step):
            if step < warm:
                return step / max(1, warm)
            if step >= warm + decay:
                return eta / lr
            c = 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, decay)))
            return eta / lr + (1 - eta / lr) * c

        sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    for _ in range(at):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"]


SCHEDULE_CASES = [
    ("constant", {}),
    ("constant_with_warmup", {}),
    ("constant_with_warmup", {"num_warmup_steps": 30}),
    ("linear", {}),
    ("linear", {"start_factor": 0.1, "end_factor": 0.5}),
    ("cosine", {}),
    ("cosine", {"num_warmup_steps": 20, "eta_min": 1e-5}),
    ("cosine_with_restarts", {"eta_min": 2e-5}),
    ("cosine_with_restarts", {"T_0": 7}),  # ai-toolkit replaces T_0 with the run's steps
    ("step", {"step_size": 40, "gamma": 0.5}),
]


@pytest.mark.parametrize(
    "name,params", SCHEDULE_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SCHEDULE_CASES)]
)
def test_the_schedule_is_ai_toolkits_at_three_steps(name, params, tmp_path):
    steps, lr = 200, 1e-4
    job = ui_job(
        "zimage", steps=steps, lr=lr, optimizer="adamw", lr_scheduler=name, lr_scheduler_params=params
    )
    mapped, notes = import_aitk(job)
    cfg = parse_config(mapped)  # the params are valid at import: never first at train
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.train.lr)
    sched = make_scheduler(cfg.train, opt, steps)
    for at in range(steps):
        if at in (1, steps // 2, steps - 1):
            assert opt.param_groups[0]["lr"] == pytest.approx(
                _aitk_lr(name, params, steps, lr, at), rel=1e-6, abs=1e-12
            )
        opt.step()
        sched.step()


def test_unknown_scheduler_params_are_named_at_config_validate(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"datasets": [{"folder_path": str(tmp_path)}],
                                   "train": {"lr_scheduler": "cosine", "lr_scheduler_params": {"T_max": 3}}}))  # fmt: skip
    r = subprocess.run([*ZLORA, "config", "validate", str(bad)], capture_output=True, text=True, cwd=REPO)
    assert (
        r.returncode == 2
        and "`train.lr_scheduler_params`: ['T_max'] do not apply to lr_scheduler cosine" in r.stderr
    )


# ai-toolkit's default_weighing_scheme at t = 1000 - index (its timesteps for `weighted` run 1000..1), read off its
# table: t = 1000 - index.
AITK_TABLE = {1000: 0.905706524848938, 950: 1.3748365640640259, 876: 1.5226575136184692, 800: 1.4412567615509033,
              700: 1.2635501623153687, 500: 0.9254037141799927, 300: 0.7312256693840027, 200: 0.7161067724227905,
              100: 0.7162171602249146, 10: 0.45207348465919495, 1: 0.4472601115703583}  # fmt: skip


def test_weighted_is_ai_toolkits_table_and_mid_weighted_keeps_the_old_curve(tmp_path):
    from zlora.train.losses import loss_weights

    t = parse_config(import_aitk(ui_job("zimage"))[0]).train
    s = torch.tensor([k / 1000 for k in AITK_TABLE])
    got = loss_weights(t, s)
    for (k, want), w in zip(AITK_TABLE.items(), got.tolist(), strict=True):
        assert w == pytest.approx(want, rel=0.01), k
    mid = t.model_copy(update={"timestep_type": "mid_weighted"})
    assert torch.allclose(loss_weights(mid, s), 6 * s * (1 - s))


def test_config_timesteps_shows_density_and_weight(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"datasets": [{"folder_path": str(tmp_path)}],
                                   "train": {"timestep_type": "weighted"}}))  # fmt: skip
    r = subprocess.run(
        [*ZLORA, "config", "timesteps", str(cfg), "--json"], capture_output=True, text=True, cwd=REPO
    )
    assert r.returncode == 0, r.stderr
    table = json.loads(r.stdout)
    assert table["t"] == list(range(0, 1001, 50))
    assert all(d == pytest.approx(1.0, abs=0.01) for d in table["density"])  # uniform draw
    assert table["weight"][table["t"].index(500)] == pytest.approx(0.9254, rel=0.01)
    cfg.write_text(yaml.safe_dump({"datasets": [{"folder_path": str(tmp_path)}],
                                   "train": {"timestep_type": "linear", "timestep_bias": "high_noise",
                                             "timestep_bias_exponent": 3}}))  # fmt: skip
    r = subprocess.run([*ZLORA, "config", "timesteps", str(cfg)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    rows = {int(line.split()[0]): float(line.split()[1]) for line in r.stdout.splitlines()[1:]}
    # s = 1 - (1 - u)^3: density 1 / (3 (1 - s)^(2/3)) -> 1/3 at s = 0, large near s = 1
    assert rows[0] == pytest.approx(1 / 3, rel=0.02) and rows[500] == pytest.approx(
        1 / (3 * 0.5 ** (2 / 3)), rel=0.02
    )
    assert rows[950] > rows[500] > rows[50]


def test_content_style_and_the_denoising_range_map_as_ai_toolkit_samples():
    job = ui_job("zimage", content_or_style="content", min_denoising_steps=100, max_denoising_steps=600)
    mapped, notes = import_aitk(copy.deepcopy(job))
    t = parse_config(mapped).train
    assert (t.timestep_bias, t.timestep_bias_exponent) == ("high_noise", 3.0)
    assert (t.min_timestep, t.max_timestep) == (400, 900)  # ai-toolkit's indices run from t = 1000 down


def test_the_ui_form_gets_the_same_curve(tmp_path):
    from fastapi.testclient import TestClient

    from zlora.train.curves import timestep_table
    from zlora.ui.app import create_app

    client = TestClient(create_app(tmp_path / "ui", start_runner=False))
    body = {"config": {"datasets": [{"folder_path": str(tmp_path)}], "train": {"timestep_type": "shift"}}}
    r = client.post("/api/config/resolve", json=body).json()
    assert r["timesteps"] == timestep_table(parse_config(r["config"]).train)
    assert r["timesteps"]["density"][0] == pytest.approx(1 / 3, rel=0.01)  # shift 3: 3 / (3 - 2 s)^2
