"""network.type lokr / loha / dora (issue 25, item 1-2): peft's LoKr, LoHa and DoRA train on the tiny model, resume
bit-identically, save with the keys ComfyUI reads (LyCORIS's; DoRA's dora_scale) at the weight ComfyUI makes of
them, and every LoRA tool takes them (DoRA with the base model's weights)."""

from __future__ import annotations

import pytest
import torch

from conftest import aitk_job
from zlora.config.aitk import import_aitk
from zlora.errors import UserError
from zlora.lora.file import read_lora
from zlora.runfolder import read_metrics
from zlora.train.adapter import USER
from zlora.train.trainer import Trainer

TYPES = {
    "lokr": {"type": "lokr", "linear": 2, "linear_alpha": 4},  # tiny: 64 = 8 x 8, w2 whole (peft: r >= 8/2)
    "lokr_factor4": {"type": "lokr", "linear": 2, "linear_alpha": 3, "lokr_factor": 4},  # w2 (16x16) = a @ b
    "lokr_full": {"type": "lokr", "linear": 2, "linear_alpha": 3, "lokr_factor": 4, "lokr_full_rank": True},
    "loha": {"type": "loha", "linear": 4, "linear_alpha": 2},
    "dora": {"type": "dora", "linear": 4, "linear_alpha": 2},
}
PREFIX = {"lokr": ("lokr_",), "loha": ("hada_",), "dora": ("lora_A", "lora_B", "lora_magnitude_vector")}


def _trainer(make_config, net: dict, name: str, steps: int = 12, **extra) -> Trainer:
    cfg = make_config({"network": net, "job": {"name": name}, "train": {"steps": steps, "lr": 1e-2}, **extra})
    t = Trainer(cfg)
    t.setup()
    return t


def comfy_delta(
    tensors: dict[str, torch.Tensor], base: str, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """A module's delta from the file's tensors (and, for DoRA, the base ``weight``), as ComfyUI's
    ``weight_adapter/lokr.py``, ``loha.py`` and ``lora.py`` + ``base.weight_decompose`` compute it
    (``calculate_weight`` at strength 1, in fp32)."""
    t = {k.removeprefix(base + "."): v.float() for k, v in tensors.items() if k.startswith(base + ".")}
    alpha = t["alpha"].item() if "alpha" in t else None
    if "dora_scale" in t:
        up, down = t["lora_B.weight"], t["lora_A.weight"]
        calc = weight + (alpha / down.shape[0]) * (up @ down)
        norm = (
            weight.norm(dim=1, keepdim=True) + torch.finfo(torch.float32).eps
        )  # dora_scale on the output axis
        return calc * (t["dora_scale"] / norm) - weight
    if "hada_w1_a" in t:
        scale = alpha / t["hada_w1_b"].shape[0] if alpha is not None else 1.0
        return scale * (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
    dim = None
    if "lokr_w1" in t:
        w1 = t["lokr_w1"]
    else:
        dim, w1 = t["lokr_w1_b"].shape[0], t["lokr_w1_a"] @ t["lokr_w1_b"]
    if "lokr_w2" in t:
        w2 = t["lokr_w2"]
    else:
        dim, w2 = t["lokr_w2_b"].shape[0], t["lokr_w2_a"] @ t["lokr_w2_b"]
    scale = alpha / dim if alpha is not None and dim is not None else 1.0
    return scale * torch.kron(w1, w2)


@pytest.mark.parametrize("kind", list(TYPES))
def test_each_network_type_trains_resumes_exactly_and_saves_the_delta_comfyui_applies(make_config, kind):
    net = TYPES[kind]
    whole = _trainer(make_config, net, "whole")
    assert whole.lora_params and all(f".{USER}" in n for n in whole.lora_params)
    prefix = PREFIX[net["type"]]
    assert all(n.split(f".{USER}")[0].rsplit(".", 1)[1].startswith(prefix) for n in whole.lora_params)
    whole.train()
    whole.save()
    losses = [r["loss"] for r in read_metrics(whole.run.metrics) if "loss" in r]
    assert sum(losses[-4:]) < sum(losses[:4]), losses  # it learns

    # the saved file: LyCORIS keys; each module's delta, computed from its tensors as ComfyUI does, is the trained one
    tensors, meta = read_lora(whole.run.final_lora)
    assert meta["type"] == net["type"]
    modules = {n.split(f".{USER}")[0].rsplit(".", 1)[0] for n in whole.lora_params}
    for name in modules:
        layer = whole.transformer.get_submodule(name)
        if (
            kind == "dora"
        ):  # the trained layer's own output on the identity: W' x - W x, through peft's forward
            base = layer.get_base_layer()
            eye = torch.eye(base.in_features)
            layer.eval()
            with torch.no_grad():
                trained = (layer(eye) - base(eye)).T
            layer.train()
            got = comfy_delta(tensors, f"diffusion_model.{name}", base.weight.detach())
            torch.testing.assert_close(got, trained, rtol=1e-4, atol=1e-6)
            assert trained.abs().max() > 1e-3  # it trained something
            continue
        trained = layer.get_delta_weight(USER).detach().float()
        torch.testing.assert_close(
            comfy_delta(tensors, f"diffusion_model.{name}"), trained, rtol=1e-5, atol=1e-7
        )
    if (
        kind == "dora"
    ):  # the network at weight 0 is the base model exactly (peft's DoRA would keep its magnitude)
        layer = whole.transformer.get_submodule(name)
        x = torch.randn(3, layer.get_base_layer().in_features)
        whole.adapters.preview(0.0)
        with torch.no_grad():
            assert torch.equal(layer(x), layer.get_base_layer()(x))
            whole.adapters.train()
            assert not torch.equal(layer(x), layer.get_base_layer()(x))
        assert all(p.requires_grad for p in whole.lora_params.values())
    if kind == "lokr_full":
        assert not any(k.endswith((".alpha", "_a", "_b")) for k in tensors)  # whole factors, scale 1
    if kind == "lokr_factor4":
        assert any(k.endswith(".lokr_w2_a") for k in tensors) and any(k.endswith(".alpha") for k in tensors)

    after = {k: v.detach().clone() for k, v in whole.lora_params.items()}
    first = _trainer(make_config, net, "split")
    for _ in range(6):
        first.step_once()
        first.step += 1
    first.save_checkpoint()
    first.cleanup()
    second = _trainer(make_config, net, "split")
    assert second.step == 6
    second.train()
    for k, v in second.lora_params.items():
        assert torch.equal(v, after[k]), (kind, k)


@pytest.mark.parametrize("kind", ["lokr", "loha", "dora"])
def test_each_type_trains_beside_the_turbo_adapter_with_ema_on_float8_weights(
    make_config, kind, adapter_file
):
    t = _trainer(
        make_config,
        TYPES[kind],
        "with_adapter",
        steps=4,
        model={"name_or_path": "builtin:tiny", "assistant_lora_path": adapter_file, "quantize": True},
        train={"steps": 4, "lr": 1e-2, "ema_config": {"use_ema": True}},
    )
    t.train()
    t.save()
    tensors, _ = read_lora(t.run.final_lora)
    assert not any("assistant" in k for k in tensors)  # the adapter is never saved
    if kind == "dora":  # the adapter's modules would have a lora_A but no dora_scale
        downs = {k.removesuffix(".lora_A.weight") for k in tensors if k.endswith(".lora_A.weight")}
        assert downs and downs == {
            k.removesuffix(".dora_scale") for k in tensors if k.endswith(".dora_scale")
        }
    else:
        assert not any(".lora_A." in k for k in tensors)
    assert all(torch.isfinite(v).all() for v in tensors.values())
    assert any(
        k.endswith({"lokr": "lokr_w1", "loha": "hada_w1_a", "dora": "dora_scale"}[kind]) for k in tensors
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dir, dataset_dir) -> dict:
    """One trained file of each type (12 steps on the tiny model)."""
    import copy

    from conftest import BASE_CONFIG
    from zlora.config import parse_config

    out = {}
    for kind in ("lokr", "lokr_factor4", "loha", "dora"):
        data = copy.deepcopy(BASE_CONFIG)
        data["job"]["output_dir"] = str(tmp_path_factory.mktemp(kind))
        data["datasets"][0]["folder_path"] = str(dataset_dir)
        data["network"] = TYPES[kind]
        data["train"].update(steps=12, lr=1e-2)
        t = Trainer(parse_config(data))
        t.setup()
        t.train()
        t.save()
        out[kind] = t.run.final_lora
    return out


def _modules(path):
    """The file's modules; DoRA ones with the base weights of the model the file names (builtin:tiny)."""
    from zlora.lora.tools import read_lora_modules

    return read_lora_modules(path)[0]


@pytest.mark.parametrize("kind", ["lokr", "lokr_factor4", "loha", "dora"])
def test_lora_tools_take_each_type(trained, kind, tmp_path, tiny_dir):
    from zlora.lora.edit import Multipliers
    from zlora.lora.tools import (
        bake_loras,
        convert_lora,
        inspect_lora,
        merge_loras,
        resize_lora,
        scale_lora,
    )

    src = trained[kind]
    modules = _modules(src)
    word = TYPES[kind]["type"]
    text = inspect_lora(src)
    assert f"type:     {word}" in text and "delta Frobenius norm per block x component" in text
    some = next(n for n in modules if n.endswith("attention.to_q"))
    assert f"{modules[some].delta_norm():.4f}" in text

    # scale: exact per component
    scale_lora(src, tmp_path / "s.safetensors", Multipliers(components={"qk": 0.5}))
    scaled = _modules(tmp_path / "s.safetensors")
    for name, m in modules.items():
        factor = 0.5 if name.endswith(("to_q", "to_k")) else 1.0
        tol = (
            dict(rtol=1e-4, atol=1e-6) if kind == "dora" else dict(rtol=1e-6, atol=0)
        )  # DoRA: W' - W cancels
        torch.testing.assert_close(scaled[name].delta(), factor * m.delta(), **tol)
        assert scaled[name].kind == word

    # convert between key styles (zlora <-> kohya), and the formats that cannot hold it say so
    convert_lora(src, tmp_path / "k.safetensors", "kohya")
    assert all(k.startswith("lora_unet_") for k in read_lora(tmp_path / "k.safetensors")[0])
    back = _modules(tmp_path / "k.safetensors")
    assert all(torch.equal(back[n].delta(), m.delta()) for n, m in modules.items())
    for fmt, says in (("diffusers", "diffusers loads only LoRA"), ("comfy", "cannot be fused")):
        with pytest.raises(UserError, match=says):
            convert_lora(src, tmp_path / f"{fmt}.safetensors", fmt)

    # resize to a LoRA through the full delta's SVD: all energy at full rank, the same delta
    kept = resize_lora(src, tmp_path / "r.safetensors", rank=64)
    assert min(kept.values()) >= 0.99
    lora = _modules(tmp_path / "r.safetensors")
    for name, m in modules.items():
        assert lora[name].kind == "lora"
        torch.testing.assert_close(lora[name].delta(), m.delta(), rtol=1e-4, atol=1e-6)
    kept = resize_lora(src, tmp_path / "r2.safetensors", rank=2)
    assert 0 < min(kept.values()) < 1

    # merge: needs a rank (SVD of the weighted sum of full deltas)
    with pytest.raises(UserError, match="choose its rank with --rank N"):
        merge_loras([(str(src), 1.0), (str(trained["loha"]), 1.0)], tmp_path / "m0.safetensors")
    merge_loras([(str(src), 0.5), (str(trained["loha"]), 1.0)], tmp_path / "m.safetensors", rank=64)
    merged, other = _modules(tmp_path / "m.safetensors"), _modules(trained["loha"])
    for name, m in modules.items():
        torch.testing.assert_close(
            merged[name].delta(), 0.5 * m.delta() + other[name].delta(), rtol=1e-4, atol=1e-6
        )

    # bake adds the full delta
    from safetensors.torch import load_file

    bake_loras(str(tiny_dir), [(str(src), 0.7)], tmp_path / "baked.safetensors")
    baked = load_file(str(tmp_path / "baked.safetensors"))
    base = load_file(str(next((tiny_dir / "transformer").glob("*.safetensors"))))
    torch.testing.assert_close(baked[f"{some}.weight"], base[f"{some}.weight"] + 0.7 * modules[some].delta())


def test_generate_applies_a_lokr_file(trained, tiny_dir, tmp_path):
    from zlora.generate import generate_image

    kw = dict(
        model=str(tiny_dir), prompt="a swatch", steps=2, width=32, height=32, device="cpu", dtype="fp32"
    )
    plain = torch.tensor(list(generate_image(loras=[], **kw).getdata()), dtype=torch.float32)
    for kind in ("lokr_factor4", "dora"):
        strong = torch.tensor(
            list(generate_image(loras=[(str(trained[kind]), 8.0)], **kw).getdata()), dtype=torch.float32
        )
        assert (plain - strong).abs().mean() > 0.5, kind


def test_a_dora_file_asks_for_its_base_model_and_takes_it_from_base(trained, tiny_dir, tmp_path):
    """A DoRA delta depends on the base weights: without the model (the file's base_model not here), inspect says
    so and the tools that need the delta refuse with the way out; --base gives it, from the CLI too."""
    import subprocess

    from safetensors.torch import save_file

    from conftest import ZLORA
    from zlora.lora.edit import Multipliers
    from zlora.lora.tools import inspect_lora, read_lora_modules, scale_lora

    tensors, meta = read_lora(trained["dora"])
    lost = tmp_path / "lost.safetensors"
    save_file(tensors, str(lost), {**meta, "base_model": str(tmp_path / "no-such-model")})
    assert "pass --base MODEL" in inspect_lora(lost)
    with pytest.raises(UserError, match="pass --base MODEL"):
        scale_lora(lost, tmp_path / "s.safetensors", Multipliers(ratio=0.5))
    assert not (tmp_path / "s.safetensors").exists()
    with pytest.raises(UserError, match="no-such"):  # a --base that is not there is named
        read_lora_modules(lost, base=str(tmp_path / "no-such"))

    with_base = inspect_lora(lost, base=str(tiny_dir))
    assert "delta Frobenius norm per block x component" in with_base and "type:     dora" in with_base
    r = subprocess.run(
        [*ZLORA, "lora", "scale", str(lost), "-o", str(tmp_path / "half.safetensors"), "--ratio", "0.5",
         "--base", str(tiny_dir)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    # a foreign-key file (--allow-foreign) keeps DoRA's and LoKr's own tensors when written back
    from zlora.lora.codecs import encode

    dora = next(iter(read_lora_modules(lost)[0].values()))
    lokr = next(iter(_modules(trained["lokr"]).values()))
    keys = encode({"kohya:other_0": dora, "other.1": lokr}, "foreign")[0]
    assert {"other_0.lora_down.weight", "other_0.dora_scale", "other.1.lokr_w1"} <= keys.keys()
    half = read_lora_modules(tmp_path / "half.safetensors", base=str(tiny_dir))[0]
    whole = read_lora_modules(lost, base=str(tiny_dir))[0]
    for name, m in whole.items():
        torch.testing.assert_close(half[name].delta(), 0.5 * m.delta(), rtol=1e-4, atol=1e-6)


def test_ai_toolkit_lokr_jobs_import_and_lokr_settings_are_checked():
    job = aitk_job(network={"type": "lokr", "linear": 8, "lokr_factor": 4, "lokr_full_rank": True})
    net = import_aitk(job)[0]["network"]
    assert net["type"] == "lokr" and net["lokr_factor"] == 4 and net["lokr_full_rank"] is True
    net = import_aitk(aitk_job(network={"type": "dora", "linear": 8}))[0]["network"]
    assert net["type"] == "dora" and net["preset"] == "attn_ff_adaln"
    from zlora.config import parse_config

    with pytest.raises(UserError, match="lokr_factor` must be -1"):
        parse_config({"network": {"type": "lokr", "lokr_factor": 1}, "datasets": [{"folder_path": "x"}]})
    with pytest.raises(UserError, match="network.dropout` is for network.type lora"):
        parse_config({"network": {"type": "loha", "dropout": 0.1}, "datasets": [{"folder_path": "x"}]})


def test_shapes_eval_scores_the_base_model_without_a_lokr_file_merged_in(trained, tiny_dir, tmp_path):
    """A LoKr file is added to the weights (diffusers' adapters take LoRA only), so `shapes eval` samples the base
    model's images before it adds the file: its base images are the base model's, file or not."""
    import subprocess

    import numpy as np
    from PIL import Image

    from conftest import ZLORA

    grids = {}
    for name, extra in (("alone", []), ("with", ["--lora", str(trained["lokr_factor4"]) + ":8"])):
        grid = tmp_path / f"{name}.png"
        cmd = [
            *ZLORA,
            "shapes",
            "eval",
            "--model",
            str(tiny_dir),
            "--prompts",
            "2",
            "--seeds",
            "1",
            "--steps",
            "2",
        ]
        r = subprocess.run([*cmd, *extra, "--grid", str(grid)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        grids[name] = np.asarray(Image.open(grid), dtype=np.int16)
    side = grids["alone"].shape[0]  # one row: the base images; "with" adds the LoRA's rows below
    assert np.array_equal(grids["with"][:side], grids["alone"])
    assert np.abs(grids["with"][side : 2 * side] - grids["alone"]).mean() > 1
