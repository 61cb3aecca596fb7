import subprocess

import pytest
import torch
from safetensors.torch import save_file

from conftest import ZLORA
from zlora.errors import UserError
from zlora.lora.codecs import read_modules, write_modules
from zlora.lora.edit import Multipliers, merge, parse_input_multipliers, parse_layer_spec, reduce_rank, scale
from zlora.lora.file import read_lora
from zlora.lora.modules import LoraModule
from zlora.lora.tools import merge_loras, scale_lora


def _lora(seed: int, rank: int, alpha: float | None, names=None) -> dict[str, LoraModule]:
    g = torch.Generator().manual_seed(seed)
    names = names or [
        f"layers.{i}.{c}"
        for i in range(3)
        for c in (
            "attention.to_q",
            "attention.to_k",
            "attention.to_v",
            "feed_forward.w1",
            "adaLN_modulation.0",
        )
    ]
    return {
        n: LoraModule(torch.randn(rank, 16, generator=g), torch.randn(24, rank, generator=g), alpha)
        for n in names
    }


def test_layer_spec_parsing():
    assert parse_layer_spec("0-2:0.5, 7:1.2") == {0: 0.5, 1: 0.5, 2: 0.5, 7: 1.2}
    for bad in ("a-b:1", "3-1:1", "5"):
        with pytest.raises(UserError, match="--layers"):
            parse_layer_spec(bad)


def test_scale_multiplies_exactly_the_chosen_blocks(tmp_path):
    src = _lora(0, 4, 2.0)
    mult = Multipliers(ratio=1.5, components={"qk": 0.5, "adaln": 0.0}, layers={1: 2.0})
    out = scale(src, mult)
    for name, m in src.items():
        f = 1.5 * (0.5 if name.endswith(("to_q", "to_k")) else 1.0) * (0.0 if "adaLN" in name else 1.0)
        f *= 2.0 if name.startswith("layers.1.") else 1.0
        assert torch.equal(out[name].A, m.A) and out[name].alpha == m.alpha
        assert torch.equal(out[name].B, m.B * f), name
    same = scale(src, Multipliers(components={"v": 3.0}))
    assert all(same[n] is src[n] for n in src if not n.endswith("to_v")), (
        "untouched modules stay bit-identical"
    )

    save_file(write_modules(src, "kohya"), str(tmp_path / "k.safetensors"))
    scale_lora(tmp_path / "k.safetensors", tmp_path / "k2.safetensors", Multipliers(ratio=0.5))
    tensors, meta = read_lora(tmp_path / "k2.safetensors")
    assert meta["format"] == "kohya" and all(k.startswith("lora_unet_") for k in tensors), "format is kept"
    back = read_modules(tensors)
    assert all(torch.equal(back[n].B, src[n].B * 0.5) for n in src)


def test_exact_merge_equals_the_weighted_sum_of_deltas(tmp_path):
    a = _lora(1, 4, 2.0)
    b = _lora(
        2, 8, None, names=[*list(a)[:5], "noise_refiner.0.attention.to_q"]
    )  # other rank, no alpha, extra module
    merged, _ = merge([(a, 0.7), (b, -0.4)])
    assert set(merged) == set(a) | set(b)
    for n, m in merged.items():
        expected = 0.7 * a[n].delta() if n in a else torch.zeros(24, 16)
        expected = expected + (-0.4 * b[n].delta() if n in b else 0)
        torch.testing.assert_close(m.delta(), expected, rtol=1e-5, atol=1e-5)  # fp32 sums of products
        assert m.rank == (4 if n in a else 0) + (8 if n in b else 0)

    save_file(write_modules(a, "zlora"), str(tmp_path / "a.safetensors"))
    save_file(write_modules(b, "diffusers"), str(tmp_path / "b.safetensors"))
    kept = merge_loras(
        [(str(tmp_path / "a.safetensors"), 0.7), (str(tmp_path / "b.safetensors"), -0.4)],
        tmp_path / "m.safetensors",
    )
    assert kept == {}
    on_disk = read_modules(*read_lora(tmp_path / "m.safetensors")[:1])
    torch.testing.assert_close(
        on_disk["layers.0.attention.to_q"].delta(), merged["layers.0.attention.to_q"].delta()
    )


def test_merge_refuses_mismatched_shapes():
    a = _lora(1, 4, 2.0, names=["layers.0.attention.to_q"])
    b = {"layers.0.attention.to_q": LoraModule(torch.randn(4, 32), torch.randn(24, 4), 4.0)}
    with pytest.raises(UserError, match=r"layers\.0\.attention\.to_q.*shapes differ"):
        merge([(a, 1.0), (b, 1.0)])


def test_rank_reduction_is_the_best_approximation_and_reports_kept_energy():
    src = _lora(3, 8, 4.0, names=["layers.0.attention.to_q"])
    full = src["layers.0.attention.to_q"].delta().double()
    s = torch.linalg.svdvals(full)
    reduced, kept = reduce_rank(src, 3)
    m = reduced["layers.0.attention.to_q"]
    assert m.rank == 3
    err = torch.linalg.norm(m.delta().double() - full) ** 2
    assert err.item() == pytest.approx((s[3:] ** 2).sum().item(), rel=1e-4)  # Eckart-Young: optimal error
    assert kept["layers.0.attention.to_q"] == pytest.approx(
        ((s[:3] ** 2).sum() / (s**2).sum()).item(), rel=1e-6
    )
    same, kept_all = reduce_rank(src, 8)
    torch.testing.assert_close(same["layers.0.attention.to_q"].delta().double(), full, rtol=1e-5, atol=1e-5)
    assert kept_all["layers.0.attention.to_q"] == pytest.approx(1.0)


def test_cli_merge_with_rank_and_scale_option_conflicts(tmp_path):
    save_file(write_modules(_lora(4, 4, 4.0), "zlora"), str(tmp_path / "a.safetensors"))
    save_file(write_modules(_lora(5, 4, 4.0), "zlora"), str(tmp_path / "b.safetensors"))
    r = subprocess.run(
        [
            *ZLORA,
            "lora",
            "merge",
            f"{tmp_path}/a.safetensors:0.5",
            f"{tmp_path}/b.safetensors:0.5",
            "-o",
            str(tmp_path / "m.safetensors"),
            "--rank",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "kept energy" in r.stdout
    assert (
        read_lora(tmp_path / "m.safetensors")[0][
            "diffusion_model.layers.0.attention.to_q.lora_A.weight"
        ].shape[0]
        == 2
    )
    r = subprocess.run(
        [
            *ZLORA,
            "lora",
            "scale",
            str(tmp_path / "a.safetensors"),
            str(tmp_path / "c.safetensors"),
            "--ffn",
            "0.5",
            "--w1",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "--ffn or --w1" in r.stderr


def test_merge_applies_each_inputs_own_component_and_layer_weights(tmp_path):
    text, mult = parse_input_multipliers("a.safetensors:0.7[qk=0.5,adaln=0,layers=0-1:2;2:3]")
    assert text == "a.safetensors:0.7" and mult.components == {"qk": 0.5, "adaln": 0.0}
    assert mult.layers == {0: 2.0, 1: 2.0, 2: 3.0}
    assert parse_input_multipliers("b.safetensors")[1] == Multipliers()
    with pytest.raises(UserError, match="not one of"):
        parse_input_multipliers("a.safetensors[speed=2]")

    a, b = _lora(6, 4, 4.0), _lora(7, 4, 4.0)
    save_file(write_modules(a, "zlora"), str(tmp_path / "a.safetensors"))
    save_file(write_modules(b, "zlora"), str(tmp_path / "b.safetensors"))
    r = subprocess.run(
        [
            *ZLORA,
            "lora",
            "merge",
            f"{tmp_path}/a.safetensors:0.5[qk=0,layers=2:3]",
            f"{tmp_path}/b.safetensors:1",
            "-o",
            str(tmp_path / "m.safetensors"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    merged = read_modules(read_lora(tmp_path / "m.safetensors")[0])
    for n in a:
        fa = 0.0 if n.endswith(("to_q", "to_k")) else 0.5 * (3.0 if n.startswith("layers.2.") else 1.0)
        torch.testing.assert_close(merged[n].delta(), fa * a[n].delta() + b[n].delta(), rtol=1e-5, atol=1e-5)
