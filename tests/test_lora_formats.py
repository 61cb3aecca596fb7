import subprocess

import pytest
import torch
from safetensors.torch import save_file

from conftest import ZLORA
from zlora.errors import UserError
from zlora.lora.codecs import detect_format, encode, read_modules, write_modules
from zlora.lora.file import read_lora
from zlora.lora.modules import LoraModule
from zlora.lora.tools import convert_lora
from zlora.models.load import load_components

TARGETS = (
    "attention.to_q",
    "attention.to_k",
    "attention.to_v",
    "attention.to_out.0",
    "feed_forward.w1",
    "feed_forward.w2",
    "feed_forward.w3",
    "adaLN_modulation.0",
)


@pytest.fixture(scope="module")
def transformer(tiny_dir):
    return load_components(tiny_dir, torch.float32).transformer


@pytest.fixture(scope="module")
def modules(transformer) -> dict[str, LoraModule]:
    """A random rank-4 LoRA on every block list of the tiny model, alpha 2 (so alpha != rank matters)."""
    g = torch.Generator().manual_seed(11)
    out = {}
    for name, mod in transformer.named_modules():
        if name.split(".")[0] in ("layers", "noise_refiner", "context_refiner") and name.endswith(TARGETS):
            A = torch.randn(4, mod.in_features, generator=g) * 0.3
            B = torch.randn(mod.out_features, 4, generator=g) * 0.3
            out[name] = LoraModule(A, B, 2.0)
    assert any("adaLN" in n for n in out) and any("noise_refiner" in n for n in out)
    return out


@pytest.mark.parametrize("fmt", ["zlora", "diffusers", "kohya", "comfy-fused"])
def test_round_trip_through_each_format_keeps_every_delta(modules, fmt, tmp_path):
    """Bit-exact where the format keeps A, B and alpha as they are; diffusers folds alpha/rank into B (one fp32
    product per weight), so there the delta is equal to rounding."""
    src = tmp_path / "a.safetensors"
    save_file(write_modules(modules, "zlora"), str(src))
    convert_lora(src, tmp_path / "b.safetensors", fmt)
    assert detect_format(list(read_lora(tmp_path / "b.safetensors")[0])) == fmt
    convert_lora(tmp_path / "b.safetensors", tmp_path / "c.safetensors", "zlora")
    a, _ = read_lora(src)
    c, meta = read_lora(tmp_path / "c.safetensors")
    assert a.keys() == c.keys()
    assert meta["converted_from"] == fmt
    if fmt == "diffusers":
        back = read_modules(c)
        for name, m in modules.items():
            torch.testing.assert_close(back[name].delta(), m.delta(), rtol=1e-6, atol=1e-7)
    else:
        assert all(torch.equal(a[k], c[k]) for k in a)


def test_kohya_names_keep_their_underscores(modules):
    keys = set(write_modules(modules, "kohya"))
    assert (
        "lora_unet_layers_0_attention_to_out_0.lora_down.weight" in keys
    )  # sd-scripts / musubi's split names
    assert "lora_unet_layers_0_attention_to_q.lora_up.weight" in keys
    assert "lora_unet_layers_0_feed_forward_w1.lora_up.weight" in keys
    assert "lora_unet_noise_refiner_0_adaLN_modulation_0.alpha" in keys
    back = read_modules(write_modules(modules, "kohya"))
    assert set(back) == set(modules)


def test_a_trained_fused_qkv_splits_into_the_same_deltas():
    g = torch.Generator().manual_seed(0)
    fused = {
        "layers.0.attention.qkv": LoraModule(
            torch.randn(6, 8, generator=g), torch.randn(24, 6, generator=g), 3.0
        )
    }
    tensors = write_modules(fused, "zlora")
    split = read_modules(tensors, "comfy-fused")
    full = fused["layers.0.attention.qkv"].delta()
    for i, comp in enumerate(("to_q", "to_k", "to_v")):
        torch.testing.assert_close(split[f"layers.0.attention.{comp}"].delta(), full[i * 8 : (i + 1) * 8])


def test_delta_norm_matches_the_dense_product(modules):
    m = next(iter(modules.values()))
    assert m.delta_norm() == pytest.approx(torch.linalg.norm(m.delta()).item(), rel=1e-6)


@pytest.mark.parametrize("fmt", ["zlora", "diffusers", "kohya"])
def test_diffusers_loads_each_written_format_and_equals_the_delta_applied_by_hand(
    modules, fmt, transformer, tiny_dir, tmp_path
):
    from diffusers import ZImagePipeline

    path = tmp_path / f"{fmt}.safetensors"
    tensors, meta = encode(modules, fmt)
    save_file(tensors, str(path), metadata=meta or None)
    pipe = ZImagePipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32)
    pipe.load_lora_weights(str(path))
    x, t, cap = (
        [torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(1))],
        torch.tensor([0.3]),
        [torch.ones(5, 32)],
    )
    with torch.no_grad():
        loaded = pipe.transformer(x, t, cap, return_dict=False)[0][0]
        by_hand = load_components(tiny_dir, torch.float32).transformer
        for name, m in modules.items():
            by_hand.get_submodule(name).weight += m.delta()
        expected = by_hand(x, t, cap, return_dict=False)[0][0]
        base = transformer(x, t, cap, return_dict=False)[0][0]
    torch.testing.assert_close(loaded, expected, rtol=1e-4, atol=1e-5)
    assert (loaded - base).abs().max() > 1e-3


def test_foreign_and_unknown_files_are_named():
    with pytest.raises(UserError, match="SDXL"):
        detect_format(["lora_te1_text_model_encoder_layers_0.lora_down.weight", "lora_te1_x.alpha"])
    with pytest.raises(UserError, match="Flux"):
        detect_format(
            ["double_blocks.0.img_attn.qkv.lora_A.weight", "double_blocks.0.img_attn.qkv.lora_B.weight"]
        )
    with pytest.raises(UserError, match="no LoRA weights"):
        detect_format(["foo.weight"])
    with pytest.raises(UserError, match="LoRA for another model"):
        detect_format(["foo.lora_A.weight", "foo.lora_B.weight"])


def test_cli_inspect_reports_alpha_equals_rank_for_ai_toolkit_files_and_refuses_pickles(modules, tmp_path):
    tensors = {k: v for k, v in write_modules(modules, "zlora").items() if not k.endswith(".alpha")}
    save_file(tensors, str(tmp_path / "aitk.safetensors"))
    r = subprocess.run(
        [*ZLORA, "lora", "inspect", str(tmp_path / "aitk.safetensors")], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "ai-toolkit" in r.stdout and "alpha = rank" in r.stdout and "layers.1" in r.stdout
    (tmp_path / "x.ckpt").write_bytes(b"\x80\x04")
    r = subprocess.run([*ZLORA, "lora", "inspect", str(tmp_path / "x.ckpt")], capture_output=True, text=True)
    assert r.returncode == 2 and "never loaded" in r.stderr and "Traceback" not in r.stderr


# ComfyUI's Z-Image model (comfy.ldm.lumina NextDiT) names its weights after the original Lumina code: fused qkv,
# `out`, `q_norm`; diffusers splits q/k/v. This maps a diffusers module name to ComfyUI's.
COMFY = {
    "attention.to_q": "attention.qkv",
    "attention.to_k": "attention.qkv",
    "attention.to_v": "attention.qkv",
    "attention.to_out.0": "attention.out",
    "attention.norm_q": "attention.q_norm",
    "attention.norm_k": "attention.k_norm",
}


def _comfy_name(name: str) -> str:
    block, _, rest = name.partition(".")
    idx, _, rest = rest.partition(".")
    return f"{block}.{idx}.{COMFY.get(rest, rest)}"


def _tensors_only(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a loader that ignores metadata applies (ComfyUI): (alpha / rank) B A with the file's alpha key, else
    scale 1; per key stem."""
    out = {}
    for key in tensors:
        for down, up in ((".lora_A.weight", ".lora_B.weight"), (".lora_down.weight", ".lora_up.weight")):
            if key.endswith(down):
                stem = key.removesuffix(down)
                A, B = tensors[key].float(), tensors[stem + up].float()
                alpha = tensors.get(stem + ".alpha")
                out[stem] = (float(alpha) / A.shape[0] if alpha is not None else 1.0) * (B @ A)
    return out


@pytest.mark.parametrize("fmt", ["zlora", "diffusers", "comfy", "comfy-fused"])
def test_a_reader_of_tensors_only_applies_the_original_delta(modules, fmt, transformer):
    tensors, _ = encode(modules, fmt)
    deltas = _tensors_only(tensors)
    if fmt in ("zlora", "diffusers"):  # diffusers module names, one delta each
        prefix = "diffusion_model." if fmt == "zlora" else "transformer."
        assert set(deltas) == {prefix + n for n in modules}
        for name, m in modules.items():
            torch.testing.assert_close(deltas[prefix + name], m.delta(), rtol=1e-6, atol=1e-7)
        return
    # comfy: every key is a ComfyUI module; q/k/v arrive as one delta on the fused qkv weight
    comfy_modules = {
        _comfy_name(n)
        for n, _ in transformer.named_modules()
        if n.split(".")[0] in ("layers", "noise_refiner", "context_refiner") and n.count(".") >= 2
    }
    prefix = "diffusion_model."
    names = {p: p for p in comfy_modules}
    expected: dict[str, list] = {}
    for name, m in modules.items():
        expected.setdefault(_comfy_name(name), []).append((name, m.delta()))
    for stem, delta in deltas.items():
        module = names.get(stem.removeprefix(prefix))
        assert stem.startswith(prefix) and module is not None, f"{stem} is no module of ComfyUI's Z-Image"
        order = {"to_q": 0, "to_k": 1, "to_v": 2}
        parts = sorted(expected.pop(module), key=lambda nd: order.get(nd[0].rsplit(".", 1)[-1], 0))
        torch.testing.assert_close(delta, torch.cat([d for _, d in parts]), rtol=1e-6, atol=1e-7)
    assert not expected, f"modules lost: {sorted(expected)[:3]}"


def musubi_merge(weights: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], multiplier: float = 1.0):
    """musubi-tuner's merge as its utils/lora_utils.py load_safetensors_with_lora_and_fp8 does it, tensors only:
    for each model weight key ``X.weight`` it looks up ``lora_unet_`` + X with ``.`` as ``_`` (then X alone),
    ``.lora_down/.lora_up.weight`` and ``.alpha`` (default: the rank), and adds multiplier x up @ down x alpha/rank.
    Returns the merged weights and the LoRA keys it never used (musubi only warns about those)."""
    unused, out = set(lora), {}
    for key, w in weights.items():
        if key.endswith(".weight"):
            stem = key.rsplit(".", 1)[0]
            for prefix in ("lora_unet_", ""):
                name = prefix + stem.replace(".", "_")
                down, up, alpha = name + ".lora_down.weight", name + ".lora_up.weight", name + ".alpha"
                if down in unused and up in unused:
                    dim = lora[down].shape[0]
                    scale = float(lora.get(alpha, dim)) / dim
                    w = w + multiplier * (lora[up].float() @ lora[down].float()) * scale
                    unused -= {down, up, alpha}
                    break
        out[key] = w
    return out, unused


def test_musubi_tuner_applies_every_module_of_a_kohya_export(modules, transformer):
    weights = {k: v.detach().float().clone() for k, v in transformer.state_dict().items()}
    merged, unused = musubi_merge(weights, write_modules(modules, "kohya"))
    assert not unused, f"musubi would drop: {sorted(unused)[:4]}"
    for name, m in modules.items():
        torch.testing.assert_close(
            merged[name + ".weight"] - weights[name + ".weight"], m.delta(), rtol=1e-5, atol=1e-6
        )
    # the old export (ComfyUI's fused names) lost every attention module there: the reason for the split names
    from zlora.lora.qkv import fuse

    old = {}
    for module, m in fuse(modules).items():
        base = "lora_unet_" + module.replace(".", "_")
        old[base + ".lora_down.weight"], old[base + ".lora_up.weight"] = m.A, m.B
        old[base + ".alpha"] = torch.tensor(m.alpha)
    _, unused_old = musubi_merge(weights, old)
    assert any("attention_qkv" in k for k in unused_old)
    assert set(read_modules(old)) == set(modules)  # and zlora still reads such files


def test_old_split_kohya_names_still_read(modules):
    old = {}
    for module, m in modules.items():
        base = "lora_unet_" + module.replace(".", "_")
        old[base + ".lora_down.weight"], old[base + ".lora_up.weight"] = m.A, m.B
        old[base + ".alpha"] = torch.tensor(m.alpha)
    back = read_modules(old)
    assert set(back) == set(modules)
    assert all(torch.equal(back[n].B, m.B) for n, m in modules.items())


def test_inspect_shows_the_effective_scale(modules, tmp_path):
    from zlora.lora.tools import inspect_lora

    save_file(write_modules(modules, "zlora"), str(tmp_path / "a.safetensors"))
    assert "scale:    0.5 (alpha/rank" in inspect_lora(tmp_path / "a.safetensors")
