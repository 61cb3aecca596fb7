import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ZLORA
from zlora.errors import UserError
from zlora.lora.bake import bake
from zlora.lora.codecs import write_modules
from zlora.lora.modules import LoraModule


def _random_lora(transformer, seed: int) -> dict[str, LoraModule]:
    g = torch.Generator().manual_seed(seed)
    return {
        name: LoraModule(
            torch.randn(4, mod.in_features, generator=g) * 0.2,
            torch.randn(mod.out_features, 4, generator=g) * 0.2,
            2.0,
        )
        for name, mod in transformer.named_modules()
        if name.startswith(("layers.", "noise_refiner."))
        and name.endswith(("to_q", "to_v", "w2", "adaLN_modulation.0"))
    }


def test_bake_equals_base_plus_weighted_deltas_and_loads_in_diffusers(tiny_dir, tmp_path):
    from diffusers import ZImagePipeline, ZImageTransformer2DModel

    base_sd = load_file(tiny_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    base = ZImageTransformer2DModel.from_pretrained(tiny_dir, subfolder="transformer")
    a, b = _random_lora(base, 1), _random_lora(base, 2)
    changed = bake(tiny_dir, [(a, 0.8), (b, -0.5)], tmp_path / "baked")
    assert len(changed) == len(a)

    baked = load_file(tmp_path / "baked" / "diffusion_pytorch_model.safetensors")
    assert baked.keys() == base_sd.keys()
    for key, t in base_sd.items():
        module = key.removesuffix(".weight")
        if module in a:
            expected = (t.float() + (0.8 * a[module].delta() + -0.5 * b[module].delta())).to(
                t.dtype
            )  # base + sum
            assert torch.equal(baked[key], expected), key
        else:
            assert torch.equal(baked[key], t), f"{key} must be untouched"

    # The baked folder loads with from_pretrained and matches diffusers' own LoRA loading at the same weight.
    loaded = ZImageTransformer2DModel.from_pretrained(tmp_path / "baked")
    path = tmp_path / "a.safetensors"
    save_file(write_modules(a, "zlora"), str(path))
    pipe = ZImagePipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32)
    pipe.load_lora_weights(str(path), adapter_name="a")
    pipe.set_adapters(["a"], adapter_weights=[0.8])
    only_a = tmp_path / "only_a.safetensors"
    bake(tiny_dir, [(a, 0.8)], only_a)
    loaded.load_state_dict(load_file(only_a))
    x, t, cap = [torch.randn(16, 1, 4, 4)], torch.tensor([0.6]), [torch.ones(3, 32)]
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(x, t, cap, return_dict=False)[0][0],
            pipe.transformer(x, t, cap, return_dict=False)[0][0],
            rtol=1e-4,
            atol=1e-5,
        )


def test_bake_names_modules_that_match_nothing(tiny_dir, tmp_path):
    stray = {"layers.99.attention.to_q": LoraModule(torch.zeros(2, 64), torch.zeros(64, 2), 2.0)}
    with pytest.raises(
        UserError, match=r"match no weight of this model \(e\.g\. layers\.99\.attention\.to_q\)"
    ):
        bake(tiny_dir, [(stray, 1.0)], tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_bake_writes_a_single_file(tiny_dir, tmp_path):
    from diffusers import ZImageTransformer2DModel

    base = ZImageTransformer2DModel.from_pretrained(tiny_dir, subfolder="transformer")
    save_file(write_modules(_random_lora(base, 3), "kohya"), str(tmp_path / "k.safetensors"))
    out = tmp_path / "baked.safetensors"
    r = subprocess.run(
        [
            *ZLORA,
            "lora",
            "bake",
            "--base",
            "builtin:tiny",
            "--lora",
            f"{tmp_path}/k.safetensors:0.5",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert load_file(out).keys() == base.state_dict().keys()
