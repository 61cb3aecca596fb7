"""Quantized frozen weights (torchao weight-only float8 / int8) on CPU: the transformer's block weights take about
half the bytes of bf16, its output stays close to the bf16 model's, a LoRA trains on top and saves as a plain file
that diffusers loads into an unquantized pipeline, and a wrong qtype is one line that lists the choices."""

from __future__ import annotations

import pytest
import torch

from zlora.models import zimage
from zlora.models.load import load_components
from zlora.models.quantize import quantize_weights, weight_bytes
from zlora.train.trainer import run_training


@pytest.mark.parametrize("qtype", ["float8", "int8"])
def test_block_weights_shrink_and_the_output_stays_close(tiny_dir, qtype):
    base = load_components(tiny_dir, torch.bfloat16, text_encoder=False).transformer
    quant = load_components(tiny_dir, torch.bfloat16, text_encoder=False).transformer
    quantize_weights(quant, qtype, "model.quantize")
    assert weight_bytes(quant.layers) < 0.6 * weight_bytes(base.layers)
    assert weight_bytes(quant.cap_embedder) == weight_bytes(
        base.cap_embedder
    )  # outside the blocks: untouched
    g = torch.Generator().manual_seed(0)
    x, caps = [torch.randn(16, 8, 8, generator=g)], [torch.randn(6, 32, generator=g)]
    with torch.no_grad():
        a = zimage.predict(base, x, torch.tensor([0.4]), caps, torch.bfloat16)[0].float()
        b = zimage.predict(quant, x, torch.tensor([0.4]), caps, torch.bfloat16)[0].float()
    assert (a - b).norm() / a.norm() < 0.1


def test_a_lora_trains_on_quantized_weights_and_loads_in_diffusers(make_config, tiny_dir):
    from diffusers import ZImagePipeline

    cfg = make_config(
        {
            "model": {"name_or_path": "builtin:tiny", "dtype": "bf16", "quantize": True, "qtype": "qfloat8"},
            "train": {"steps": 3},
        }
    )
    assert cfg.model.qtype == "float8"  # ai-toolkit's spelling is accepted
    lora = run_training(cfg)
    pipe = ZImagePipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32)
    pipe.load_lora_weights(str(lora))
    assert any("lora" in n for n, _ in pipe.transformer.named_parameters())


def test_an_unknown_qtype_lists_the_choices(make_config):
    from zlora.errors import UserError

    with pytest.raises(UserError, match="model.qtype.*'float8', 'qfloat8', 'int8' or 'none'"):
        make_config({"model": {"name_or_path": "builtin:tiny", "quantize": True, "qtype": "fp4"}})
