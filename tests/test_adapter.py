"""The Turbo training adapter (model.assistant_lora_path): active while training, exactly absent from previews
and from every saved file."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from zlora.errors import UserError
from zlora.lora.file import read_lora
from zlora.models import zimage
from zlora.models.load import resolve_file_ref
from zlora.train.adapter import ADAPTER
from zlora.train.trainer import Trainer, run_training


def _trainer(
    make_config,
    adapter: str | None,
    steps: int = 3,
    name: str = "t",
    dtype: str = "fp32",
    quantize: bool = False,
) -> Trainer:
    model = {"assistant_lora_path": adapter, "dtype": dtype} if adapter else {"dtype": dtype}
    model["quantize"] = quantize
    cfg = make_config({"model": model, "train": {"steps": steps, "lr": 1e-2}, "job": {"name": name}})
    t = Trainer(cfg)
    t.setup()
    return t


def _image(t: Trainer) -> np.ndarray:
    embed = t.data.embedding(t.data.entries[0].caption)
    kw = dict(height=32, width=32, num_inference_steps=3, guidance_scale=0.0, output_type="np")
    return t.pipe(prompt_embeds=[embed], generator=torch.Generator().manual_seed(3), **kw).images


def test_adapter_is_active_in_training_frozen_and_never_saved(make_config, adapter_file):
    t = _trainer(make_config, adapter_file)
    adapter_before = {n: p.clone() for n, p in t.transformer.named_parameters() if f".{ADAPTER}." in n}
    assert adapter_before and all(f".{ADAPTER}." not in n for n in t.lora_params)
    t.train()

    x, sig, cap = (
        t.data.latents([0], t.parts.vae),
        torch.tensor([0.5]),
        [t.data.embedding(t.data.entries[0].caption)],
    )
    with torch.no_grad():
        t.adapters.train()
        train_out = zimage.predict(t.transformer, x, sig, cap, t.dtype)[0]
        t.adapters.preview()
        preview_out = zimage.predict(t.transformer, x, sig, cap, t.dtype)[0]
    assert (train_out - preview_out).abs().max() > 1e-3, "the adapter must change training forwards"
    for n, p in t.transformer.named_parameters():
        if n in adapter_before:
            assert torch.equal(p, adapter_before[n]), f"adapter weight {n} changed"

    tensors, _ = read_lora(t.save())
    assert not any(ADAPTER in k or "refiner" in k for k in tensors), "adapter weights leaked into the LoRA"
    t.cleanup()
    plain, _ = read_lora(
        run_training(make_config({"train": {"steps": 3, "lr": 1e-2}, "job": {"name": "plain"}}))
    )
    assert tensors.keys() == plain.keys()
    assert any(not torch.equal(tensors[k], plain[k]) for k in tensors), "training with the adapter differs"


@pytest.mark.parametrize("dtype,quantize", [("fp32", False), ("bf16", False), ("bf16", True)])
def test_previews_equal_base_plus_user_lora_without_the_adapter_exactly(
    make_config, adapter_file, dtype, quantize
):
    """Also with the base stored in bf16, or quantized to float8: the adapter is a separate adapter, never merged
    into (and subtracted from) low-precision weights, so nothing drifts."""
    t = _trainer(make_config, adapter_file, dtype=dtype, quantize=quantize)
    assert t.transformer.get_submodule("layers.0.attention.to_k").weight.dtype == t.dtype
    t.train()
    t.transformer.eval()
    t.adapters.preview()
    with torch.no_grad():
        preview = _image(t)
        t.transformer.delete_adapters(ADAPTER)  # the adapter gone entirely: base + user LoRA
        reference = _image(t)
    t.cleanup()
    assert np.abs(preview - reference).max() == 0.0


def test_adapter_reference_errors_name_the_fix(tmp_path):
    (tmp_path / "v1.safetensors").write_bytes(b"")
    (tmp_path / "v2.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match=r"is a folder: .*Point it at one of: v1.safetensors, v2.safetensors"):
        resolve_file_ref(str(tmp_path), "model.assistant_lora_path")
    with pytest.raises(UserError, match="Windows path"):
        resolve_file_ref(r"C:\models\adapter.safetensors", "model.assistant_lora_path")
    (tmp_path / "a.ckpt").write_bytes(b"")
    with pytest.raises(UserError, match="pickle files are never loaded"):
        resolve_file_ref(str(tmp_path / "a.ckpt"), "model.assistant_lora_path")
    with pytest.raises(UserError, match="not found"):
        resolve_file_ref(str(tmp_path / "missing.safetensors"), "model.assistant_lora_path")


def test_a_file_that_is_not_a_zimage_lora_is_a_user_error(make_config, tmp_path):
    bad = tmp_path / "sdxl.safetensors"
    save_file({"lora_te1_text_model.weight": torch.zeros(2, 2)}, str(bad))
    with pytest.raises(UserError, match="assistant_lora_path"):
        _trainer(make_config, str(bad))


def test_resume_with_the_adapter_equals_an_uninterrupted_run(make_config, adapter_file):
    def cfg(name, steps):
        return make_config(
            {
                "model": {"assistant_lora_path": adapter_file},
                "job": {"name": name},
                "train": {"steps": steps, "lr": 1e-2},
                "save": {"save_every": 2},
            }
        )

    full, _ = read_lora(run_training(cfg("full", 4)))
    run_training(cfg("split", 2))
    resumed, _ = read_lora(run_training(cfg("split", 4)))
    assert all(torch.equal(full[k], resumed[k]) for k in full)
