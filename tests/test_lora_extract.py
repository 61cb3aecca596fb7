import subprocess

import pytest
import torch
from safetensors.torch import load_file

from conftest import ZLORA
from zlora.errors import UserError
from zlora.lora.bake import bake
from zlora.lora.codecs import read_modules
from zlora.lora.extract import extract
from zlora.lora.file import read_lora
from zlora.lora.modules import LoraModule


def _low_rank_lora(seed: int) -> dict[str, LoraModule]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(2):
        for name, fan_in, fan_out in (("attention.to_q", 64, 64), ("feed_forward.w2", 170, 64)):
            out[f"layers.{i}.{name}"] = LoraModule(
                torch.randn(3, fan_in, generator=g) * 0.3, torch.randn(fan_out, 3, generator=g) * 0.3, 3.0
            )
    return out


def test_extract_recovers_a_known_low_rank_difference(tiny_dir, tmp_path):
    hidden = load_file(tiny_dir / "transformer" / "diffusion_pytorch_model.safetensors")[
        "layers.0.feed_forward.w2.weight"
    ]
    lora = _low_rank_lora(0)
    lora = {
        k: v if "w2" not in k else LoraModule(v.A[:, : hidden.shape[1]], v.B, v.alpha)
        for k, v in lora.items()
    }
    tuned = tmp_path / "tuned.safetensors"
    bake(tiny_dir, [(lora, 1.0)], tuned)
    base = str(tiny_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    modules, errors = extract(base, str(tuned), rank=3)
    assert set(modules) == set(lora), "only the changed modules are extracted"
    for name, m in lora.items():
        torch.testing.assert_close(modules[name].delta(), m.delta(), rtol=1e-3, atol=1e-4)
        assert errors[name] < 1e-4
    low, err_low = extract(base, str(tuned), rank=1)
    assert all(0.05 < e < 1 for e in err_low.values()), "rank 1 cannot hold a rank-3 difference"


def test_extract_errors_and_cli(tiny_dir, tmp_path):
    base = str(tiny_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(UserError, match="nothing to extract"):
        extract(base, base, rank=2)
    tuned = tmp_path / "tuned.safetensors"
    lora = {"layers.1.attention.to_q": LoraModule(torch.randn(2, 64) * 0.3, torch.randn(64, 2) * 0.3, 2.0)}
    bake(tiny_dir, [(lora, 1.0)], tuned)
    out = tmp_path / "x.safetensors"
    r = subprocess.run(
        [
            *ZLORA,
            "lora",
            "extract",
            "--base",
            "builtin:tiny",
            "--tuned",
            str(tuned),
            "--rank",
            "2",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    back = read_modules(read_lora(out)[0])
    torch.testing.assert_close(
        back["layers.1.attention.to_q"].delta(), lora["layers.1.attention.to_q"].delta(), rtol=1e-3, atol=1e-4
    )
