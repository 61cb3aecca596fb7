"""ai-toolkit job files, written the way ai-toolkit's own Z-Image examples are (tests/aitk/): every setting is
kept, mapped (one note line) or named as unsupported (one note line); `zlora train` runs such a file and
`zlora config import` writes the equivalent zlora config."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ZLORA
from zlora.config import parse_config, read_yaml
from zlora.config.aitk import import_aitk
from zlora.errors import UserError

JOBS = Path(__file__).parent / "aitk"


def _job(name: str, tmp_path: Path, dataset_dir: Path) -> Path:
    text = (JOBS / f"zimage_{name}.yaml").read_text()
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.replace('"DATA"', f'"{dataset_dir}"').replace('"OUTPUT"', f'"{tmp_path / "out"}"'))
    return path


@pytest.mark.parametrize(
    "name,arch,model,adapter,bias,save_dtype",
    [
        (
            "turbo",
            "zimage:turbo",
            "Tongyi-MAI/Z-Image-Turbo",
            "zimage_turbo_training_adapter_v1",
            "balanced",
            "bf16",
        ),
        ("deturbo", "zimage:deturbo", "ostris/Z-Image-De-Turbo", None, "low_noise", "bf16"),
        ("base", "zimage", "Tongyi-MAI/Z-Image", None, "high_noise", "fp16"),
    ],
)
def test_the_examples_map_every_setting(name, arch, model, adapter, bias, save_dtype):
    mapped, notes = import_aitk(read_yaml((JOBS / f"zimage_{name}.yaml").read_text()))
    cfg = parse_config(mapped)
    assert cfg.job.name.startswith("my_first_zimage") and cfg.job.output_dir == "OUTPUT"
    assert cfg.job.device == "cuda:0" and cfg.job.trigger_word == "p3r5on"
    assert (cfg.model.arch, cfg.model.name_or_path, cfg.model.dtype) == (arch, model, "bf16")
    assert (
        (adapter in (cfg.model.assistant_lora_path or ""))
        if adapter
        else cfg.model.assistant_lora_path is None
    )
    assert (cfg.network.linear, cfg.network.linear_alpha) == (16, 16)
    assert (cfg.save.dtype, cfg.save.save_every, cfg.save.max_step_saves_to_keep) == (save_dtype, 250, 4)
    ds = cfg.datasets[0]
    assert (ds.folder_path, ds.resolution, ds.cache_latents, ds.caption_dropout_rate) == (
        "DATA",
        [512, 768, 1024],
        True,
        0.05,
    )
    t = cfg.train
    assert (t.steps, t.lr, t.weight_decay, t.timestep_type, t.timestep_bias) == (
        3000,
        1e-4,
        1e-4,
        "weighted",
        bias,
    )
    assert t.optimizer in ("adamw8bit", "adamw") and t.optimizer_params == {"eps": 1e-6}  # ai-toolkit's eps
    prompts = cfg.sample.prompt_list()
    assert [p.prompt for p in prompts][0].startswith("p3r5on") and (prompts[1].width, prompts[1].height) == (
        1216,
        832,
    )
    assert cfg.sample.walk_seed and cfg.sample.sample_every == 250
    assert cfg.model.low_vram is False and cfg.model.blocks_to_swap is None  # low_vram: false, no offloading
    text = "\n".join(notes)
    assert (cfg.model.quantize, cfg.model.qtype, cfg.model.quantize_te, cfg.model.qtype_te) == (
        True,
        "float8",
        True,
        "float8",
    )
    for unsupported in (
        "train.switch_boundary_every: no zlora equivalent",
        "logging: no zlora equivalent",
        "datasets[0].flip_y: no zlora equivalent",
    ):
        assert unsupported in text
    for mapped_note in (
        "training_folder -> job.output_dir",
        "config.name -> job.name",
        "train.dtype -> model.dtype",
        "train.optimizer_params.weight_decay -> train.weight_decay",
        "datasets[0].cache_latents_to_disk -> datasets[0].cache_latents",
    ):
        assert mapped_note in text


def test_zlora_train_runs_an_ai_toolkit_job_and_names_what_it_dropped(tmp_path, dataset_dir):
    job = _job("turbo", tmp_path, dataset_dir)
    overrides = [
        "model.name_or_path=builtin:tiny",
        "model.assistant_lora_path=null",
        "model.dtype=fp32",
        "model.quantize=false",
        "model.quantize_te=false",
        "job.device=cpu",
        "train.optimizer=adamw",
        "train.steps=2",
        "train.gradient_checkpointing=false",
        "datasets.0.resolution=[32]",
        "sample.prompts=[]",
        "network.linear=4",
        "network.linear_alpha=4",
    ]
    r = subprocess.run([*ZLORA, "train", str(job), *overrides], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ai-toolkit job: train.switch_boundary_every: no zlora equivalent" in r.stderr
    assert (
        tmp_path / "out" / "my_first_zimage_turbo_lora_v1" / "my_first_zimage_turbo_lora_v1.safetensors"
    ).is_file()
    out = tmp_path / "zlora.yaml"
    r = subprocess.run([*ZLORA, "config", "import", str(job), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert parse_config(yaml.safe_load(out.read_text())).job.name == "my_first_zimage_turbo_lora_v1"
    r = subprocess.run([*ZLORA, "config", "import", str(job), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "--overwrite" in r.stderr


def test_other_processes_are_named_as_skipped_and_typos_get_did_you_mean():
    data = read_yaml((JOBS / "zimage_deturbo.yaml").read_text())
    proc = data["config"]["process"][0]
    data["config"]["process"] = [{"type": "extract", "config": {}}, proc, {**proc, "type": "sd_trainer"}]
    mapped, notes = import_aitk(data)
    assert "config.process[0] (type extract) skipped: not a trainer" in notes
    assert "config.process[2] (type sd_trainer) skipped: zlora runs one trainer process" in notes
    assert parse_config(mapped).model.arch == "zimage:deturbo"
    proc["train"]["lrr"] = 1e-4
    data["config"]["process"] = [proc]
    with pytest.raises(UserError, match=r"did you mean `train.lr`"):
        parse_config(import_aitk(data)[0])
    data["config"]["process"] = [{"type": "extract"}]
    with pytest.raises(UserError, match="no trainer process"):
        import_aitk(data)


def test_regularisation_datasets_carry_over():
    data = read_yaml((JOBS / "zimage_deturbo.yaml").read_text())
    proc = data["config"]["process"][0]
    proc["datasets"].append(
        {**proc["datasets"][0], "folder_path": "/data/reg", "is_reg": True, "prior_reg": True}
    )
    mapped, notes = import_aitk(data)
    regs = [(d.is_reg, d.prior_reg) for d in parse_config(mapped).datasets]
    assert regs == [(False, False), (True, True)]
    assert not any("is_reg" in n or "prior_reg" in n for n in notes)  # nothing dropped
