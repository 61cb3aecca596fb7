"""Layer offloading (model.blocks_to_swap / model.low_vram) on CPU: the host and the compute device are both the
CPU, but the placement still makes a real copy of each swapped block before use and drops it after, through the
same hooks as on a GPU. A LoRA trained with swapped blocks must be bit-identical to one trained without."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import aitk_job
from zlora.config.aitk import import_aitk
from zlora.errors import UserError
from zlora.models import placement
from zlora.models.load import load_components
from zlora.models.placement import GiB, Swapped, auto_blocks, placement_for
from zlora.models.tiny import make_tiny
from zlora.train.resume import changes
from zlora.train.trainer import Trainer

LAYERS = 6


@pytest.fixture(scope="module")
def tiny6(tmp_path_factory):
    """The tiny Z-Image with 6 main blocks (the builtin has 2), so 3 can be swapped and 3 stay."""
    return str(make_tiny(tmp_path_factory.mktemp("tiny6") / "model", 0, n_layers=LAYERS))


@pytest.fixture(scope="module")
def adapter6(tmp_path_factory, tiny6) -> str:
    transformer = load_components(Path(tiny6), torch.float32).transformer
    g = torch.Generator().manual_seed(5)
    sd = {}
    for name, mod in transformer.named_modules():
        if name.endswith(("attention.to_q", "attention.to_v", "feed_forward.w1")):
            sd[f"diffusion_model.{name}.lora_A.weight"] = torch.randn(4, mod.in_features, generator=g) * 0.2
            sd[f"diffusion_model.{name}.lora_B.weight"] = torch.randn(mod.out_features, 4, generator=g) * 0.2
    path = tmp_path_factory.mktemp("adapter6") / "adapter.safetensors"
    save_file(sd, str(path))
    return str(path)


def _trained(make_config, tiny6, name, swap=None, steps=3, checkpointing=True, network=None, **model):
    cfg = make_config(
        {
            "job": {"name": name},
            **({"network": network} if network else {}),
            "model": {"name_or_path": tiny6, "dtype": "fp32", "blocks_to_swap": swap, **model},
            "train": {"steps": steps, "lr": 1e-2, "gradient_checkpointing": checkpointing},
        }
    )
    t = Trainer(cfg)
    t.setup()
    t.train()
    return t


def _weights(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in t.lora_params.items()}


def _image(t: Trainer) -> np.ndarray:
    embed = t.data.embedding(t.data.entries[0].caption)
    kw = dict(height=32, width=32, num_inference_steps=3, guidance_scale=0.0, output_type="np")
    return t.pipe(prompt_embeds=[embed], generator=torch.Generator().manual_seed(3), **kw).images


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_swapped_blocks_train_bit_identical_and_preview_the_same(make_config, tiny6, checkpointing, caplog):
    plain = _trained(make_config, tiny6, "plain", None, checkpointing=checkpointing)
    with caplog.at_level(logging.INFO, logger="zlora.models.placement"):
        swapped = _trained(make_config, tiny6, "swapped", 3, checkpointing=checkpointing)
    p = swapped.placement
    assert isinstance(p, Swapped) and p.swapped == (3, 4, 5)
    assert "blocks 3–5 of 6 swapped (3 × " in caplog.text and "estimated peak" in caplog.text
    assert p.bytes_moved > 0
    assert _same(_weights(plain), _weights(swapped))
    assert np.array_equal(_image(plain), _image(swapped))  # previews go through the same hooks
    # the residency bookkeeping: never more than the current block and the one prefetched
    assert 0 < p.max_loaded <= 2
    assert p.device_bytes() <= 2 * p.plan.block_bytes
    # outside a call, a swapped block's base weights are the host tensors, its LoRA is the trained parameter
    block = swapped.transformer.layers[3]
    hosts = {id(h) for _, _, h in p.hosts[3]}
    current = {id(t) for slots, k, _ in p.hosts[3] for t in [slots[k]]}
    assert (hosts == current) != (p.current == 3)
    lora = [n for n, q in block.named_parameters() if q.requires_grad]
    assert lora and all("lora_" in n for n in lora)


def test_prefetch_follows_forward_then_recomputation(make_config, tiny6):
    """With gradient checkpointing the blocks run forward, then backward (recomputed): the prefetch follows, so
    after the first step no block is ever copied on demand."""
    t = _trained(make_config, tiny6, "order", 3, steps=1)
    p = t.placement
    calls = []
    load = p._load
    p._load = lambda i, prefetch: (calls.append((i, prefetch)), load(i, prefetch))[1]
    t.transformer.train()
    for _ in range(2):
        t.step_once()
    assert calls and all(prefetch for _, prefetch in calls), calls
    # per step two copies: the blocks at both turns are reused (5 for its recomputation, 3 and 4 from the backward
    # into the next forward), so forward brings 5 (while 4 runs) and the backward brings 3 (while 4 runs)
    assert [i for i, _ in calls] == [5, 3] * 2
    assert p.max_loaded == 2


def test_adapter_and_float8_with_swapped_blocks_are_bit_identical(make_config, tiny6, adapter6):
    common = {"assistant_lora_path": adapter6, "quantize": True, "qtype": "float8"}
    plain = _trained(make_config, tiny6, "qplain", None, steps=2, **common)
    swapped = _trained(make_config, tiny6, "qswap", 2, steps=2, **common)
    assert _same(_weights(plain), _weights(swapped))
    # the quantized bytes are what moves: a swapped block's host weights are float8 tensors
    hosts = [h for _, _, h in swapped.placement.hosts[5]]
    assert any(type(h.data if isinstance(h, torch.nn.Parameter) else h).__name__ != "Tensor" for h in hosts)
    # previews drop the adapter exactly, with swapped blocks too
    plain.adapters.preview(), swapped.adapters.preview()
    assert np.array_equal(_image(plain), _image(swapped))


def test_dora_with_swapped_blocks_is_bit_identical(make_config, tiny6):
    """DoRA reads the base weight in every forward (its row norms): the swapped block's device copy serves it."""
    net = {"type": "dora", "linear": 4, "linear_alpha": 4}
    plain = _trained(make_config, tiny6, "dplain", None, steps=2, network=net)
    swapped = _trained(make_config, tiny6, "dswap", 2, steps=2, network=net)
    weights = _weights(plain)
    assert any(".lora_magnitude_vector." in k for k in weights)
    assert _same(weights, _weights(swapped))


def test_auto_picks_the_fewest_blocks_that_fit():
    block, weights, acts, margin = 345, 345 * 30 + 800, 2000, 1500  # MiB-like units
    assert auto_blocks(10**9, weights, block, 30, acts, margin) == 0  # everything fits
    need0 = weights + acts + margin
    assert auto_blocks(need0, weights, block, 30, acts, margin) == 0
    # one block short: swapping 1 adds 2 in flight, so 3 must go to free 1
    assert auto_blocks(need0 - 1, weights, block, 30, acts, margin) == 3
    assert auto_blocks(need0 - block * 5, weights, block, 30, acts, margin) == 7
    assert auto_blocks(1, weights, block, 30, acts, margin) == 30  # nothing fits: everything swapped


def test_auto_on_a_given_free_memory_and_the_limits(monkeypatch, make_config, tiny6):
    model = load_components(Path(tiny6), torch.float32).transformer
    # on the CPU there is no device memory to save: auto swaps nothing
    p = placement_for(torch.device("cpu"), low_vram=True)
    p.place(model, None)
    assert isinstance(p, Swapped) and p.swapped == ()
    # with a free-memory figure: the documented rule, for this model's block size
    monkeypatch.setattr(placement, "free_memory", lambda device: 1)
    p = placement_for(torch.device("cpu"), blocks_to_swap="auto")
    p.place(load_components(Path(tiny6), torch.float32).transformer, None)
    assert p.swapped == tuple(range(LAYERS))
    with pytest.raises(
        UserError, match=r"model.blocks_to_swap is 7 but the model has 6 main blocks; use 0–6"
    ):
        placement_for(torch.device("cpu"), blocks_to_swap=7).place(model, None)
    assert placement_for(torch.device("cpu"), blocks_to_swap=None).swapped == ()
    assert int(placement.AUTO_MARGIN_GIB * GiB) > 0


def test_offload_settings_do_not_block_a_resume_and_aitk_imports_them():
    old = {"model": {"blocks_to_swap": None, "low_vram": False}}
    new = {"model": {"blocks_to_swap": 8, "low_vram": True}}
    assert changes(old, new) == {}
    job = aitk_job(
        model={
            "name_or_path": "Tongyi-MAI/Z-Image-Turbo",
            "arch": "zimage:turbo",
            "low_vram": True,
            "layer_offloading": True,
            "layer_offloading_transformer_percent": 0.5,
        },
        datasets=[{"folder_path": "/data"}],
    )
    data, notes = import_aitk(job)
    assert data["model"]["low_vram"] is True and data["model"]["blocks_to_swap"] == 15
    assert "model.layer_offloading_transformer_percent 0.5 -> model.blocks_to_swap 15 (of 30 blocks)" in notes
    assert not any("no zlora equivalent" in n for n in notes), notes


def test_generate_with_swapped_blocks_gives_the_same_image(tiny6, capsys, tmp_path):
    from zlora.cli import main
    from zlora.generate import generate_image

    kw = dict(model=tiny6, loras=[], prompt="a red circle", steps=2, width=32, height=32, device="cpu")
    plain = np.asarray(generate_image(**kw))
    swapped = np.asarray(generate_image(**kw, blocks_to_swap=3))
    assert np.array_equal(plain, swapped)
    out = tmp_path / "x.png"
    assert main(["generate", "--model", tiny6, "--prompt", "x", "--blocks-to-swap", "9", "-o", str(out)]) == 2
    assert (
        "blocks_to_swap is 9 but the model has 6 main blocks" in capsys.readouterr().err and not out.exists()
    )
