"""TrainData on the tiny Z-Image: latent and text-embedding caches (counted encoder calls), bad files, caption
dropout, and a batch-size-4 run over mixed aspect ratios."""

import shutil
import subprocess

import pytest
import torch
import yaml
from diffusers import AutoencoderKL
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import ZLORA
from zlora.data.loader import TrainData
from zlora.errors import UserError
from zlora.models.load import load_text_encoder
from zlora.models.tiny import builtin_tiny_path
from zlora.train.trainer import Trainer, run_training

CPU = torch.device("cpu")
SIZES = [(96, 48), (100, 50), (48, 96), (50, 100), (64, 64), (70, 64), (96, 48), (48, 96)]


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    """Eight images of three aspect ratios (2:1, 1:2, 1:1 at resolution 48), captions of different lengths."""
    folder = tmp_path_factory.mktemp("mixed")
    for i, (w, h) in enumerate(SIZES):
        im = Image.new("RGB", (w, h), (30 * i, 255 - 30 * i, 90))
        im.paste((255, 255, 255), (0, 0, w // 3, h // 2))
        im.save(folder / f"m{i}.png")
        (folder / f"m{i}.txt").write_text("[trigger] shape " + "with detail " * i, encoding="utf-8")
    return folder


def _data(make_config, folder, model=None, calls=None, cache_text=False, **ds):
    """TrainData over one dataset, latents and texts prepared; ``calls`` counts text-encoder loads."""
    model = model or builtin_tiny_path()
    cfg = make_config(
        {
            "datasets": [{"folder_path": str(folder), "resolution": 48, "caption_dropout_rate": 0.0, **ds}],
            "train": {"cache_text_embeddings": cache_text},
            "sample": {"prompts": ["a preview prompt"]},
        }
    )
    data = TrainData(cfg, model, CPU)
    data.prepare_latents(_vae(model))

    def load():
        if calls is not None:
            calls.append(1)
        return load_text_encoder(model, torch.float32)

    data.prepare_text(load)
    return data


def _vae(model=None):
    return AutoencoderKL.from_pretrained(model or builtin_tiny_path(), subfolder="vae")


def test_latent_cache_encodes_each_entry_once_and_matches_uncached_latents(make_config, mixed_dir, tmp_path):
    cache = tmp_path / "cache"
    first = _data(make_config, mixed_dir, cache_latents=True, cache_dir=str(cache), flip_x=True)
    n = len(first.entries)
    assert n == 16 and first.encoder_calls["vae"] == 16  # 8 images x (plain, mirrored)
    second = _data(make_config, mixed_dir, cache_latents=True, cache_dir=str(cache), flip_x=True)
    cached = second.latents(list(range(n)), None)  # no VAE needed: a VAE call would fail on None
    assert second.encoder_calls["vae"] == 0
    uncached = _data(make_config, mixed_dir, flip_x=True)
    vae = _vae()
    for i, e in enumerate(uncached.entries):
        (fresh,) = uncached.latents([i], vae)
        assert fresh.shape == (16, e.bucket[1] // 8, e.bucket[0] // 8)
        torch.testing.assert_close(fresh, cached[i], atol=1e-5, rtol=1e-5)
    plain = {e.image.name: cached[i] for i, e in enumerate(second.entries) if not e.flip}
    mirrored = {e.image.name: cached[i] for i, e in enumerate(second.entries) if e.flip}
    assert all(not torch.allclose(plain[k], mirrored[k]) for k in plain)


def test_a_changed_image_or_vae_invalidates_only_its_entries(make_config, mixed_dir, tmp_path, tiny_dir):
    folder, cache = tmp_path / "data", str(tmp_path / "cache")
    shutil.copytree(mixed_dir, folder)
    assert _data(make_config, folder, cache_latents=True, cache_dir=cache).encoder_calls["vae"] == 8
    Image.new("RGB", (64, 64), "purple").save(folder / "m4.png")
    assert _data(make_config, folder, cache_latents=True, cache_dir=cache).encoder_calls["vae"] == 1
    other_vae = tmp_path / "model"
    shutil.copytree(tiny_dir, other_vae)
    weights = next((other_vae / "vae").glob("*.safetensors"))
    state = load_file(weights)
    name = next(iter(state))
    state[name] = state[name] + 0.01
    save_file(state, weights)
    assert (
        _data(make_config, folder, other_vae, cache_latents=True, cache_dir=cache).encoder_calls["vae"] == 8
    )


def test_damaged_or_half_written_cache_entries_are_repaired(make_config, mixed_dir, tmp_path, caplog):
    cache = tmp_path / "cache"
    data = _data(make_config, mixed_dir, cache_latents=True, cache_dir=str(cache))
    good = data.latents([0], None)[0].clone()  # entries are memory-mapped: copy before damaging the file
    entry = data.latent_caches[0].path(data.latent_key(data.entries[0]))
    entry.write_bytes(entry.read_bytes()[:100])  # truncated by a crash or a full disk
    stray = entry.parent / f".{entry.name}.abc.tmp"  # what a run killed mid-write leaves
    stray.write_bytes(b"partial")
    again = _data(make_config, mixed_dir, cache_latents=True, cache_dir=str(cache))
    assert not stray.exists()
    vae = _vae()
    torch.testing.assert_close(again.latents([0], vae)[0], good, atol=1e-5, rtol=1e-5)
    assert "damaged" in caplog.text and again.encoder_calls["vae"] == 1
    assert again.latents([0], None)[0].shape == good.shape  # the repaired entry is read back


def test_text_cache_needs_no_text_encoder_on_the_second_run(make_config, mixed_dir, tmp_path):
    cache = str(tmp_path / "cache")
    loads: list = []
    first = _data(make_config, mixed_dir, calls=loads, cache_dir=cache, cache_text=True)
    # 8 distinct captions + the empty prompt (caption dropout) + the preview prompt; neg is "" too
    assert first.encoder_calls["text"] == 10 and len(loads) == 1
    second = _data(make_config, mixed_dir, calls=loads, cache_dir=cache, cache_text=True)
    assert second.encoder_calls["text"] == 0 and len(loads) == 1
    for e in first.entries:
        assert torch.equal(first.embedding(e.caption), second.embedding(e.caption))
    uncached = _data(make_config, mixed_dir, calls=loads)
    assert uncached.encoder_calls["text"] == 10 and len(loads) == 2
    assert torch.equal(uncached.embedding(""), second.embedding(""))


def test_caption_dropout_uses_the_empty_prompt_at_its_rate(make_config, mixed_dir, tmp_path):
    data = _data(
        make_config, mixed_dir, cache_dir=str(tmp_path / "c"), cache_text=True, caption_dropout_rate=0.3
    )
    empty = data.embedding("")
    g = torch.Generator().manual_seed(0)
    drawn = [data.captions([i % 8], g)[0] for i in range(400)]
    dropped = sum(d.shape == empty.shape and torch.equal(d, empty) for d in drawn)
    assert 80 < dropped < 160  # 0.3 * 400 = 120
    data.cfg.datasets[0].caption_dropout_rate = 0.0
    assert all(data.captions([i], g)[0].shape != empty.shape for i in range(8))


def test_bad_files_are_skipped_with_a_summary_unless_nothing_is_usable(make_config, tmp_path, caplog):
    Image.new("RGB", (64, 64), "green").save(tmp_path / "good.png")
    Image.new("RGB", (40, 40), "green").save(tmp_path / "small.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "cut.png").write_bytes((tmp_path / "good.png").read_bytes()[:60])
    data = _data(make_config, tmp_path)
    assert [e.image.name for e in data.entries] == ["good.png"]
    assert (
        "3 of 5 images skipped" in caplog.text
        and "small.png (40x40) too small for resolution 48" in caplog.text
    )
    for name in ("good.png", "small.png"):
        (tmp_path / name).unlink()
    with pytest.raises(UserError, match="no usable image"):
        _data(make_config, tmp_path)


def test_batch_size_4_over_mixed_aspect_ratios_trains_from_one_bucket_per_batch(
    make_config, mixed_dir, tmp_path
):
    cfg = make_config(
        {
            "train": {"steps": 6, "batch_size": 4, "cache_text_embeddings": True},
            "datasets": [
                {
                    "folder_path": str(mixed_dir),
                    "resolution": [48, 32],
                    "flip_x": True,
                    "cache_latents": True,
                    "cache_dir": str(tmp_path / "cache"),
                    "caption_dropout_rate": 0.2,
                    "num_repeats": 2,
                }
            ],
        }
    )
    t = Trainer(cfg)
    t.setup()
    buckets = {e.bucket for e in t.data.entries}
    assert {(64, 32), (32, 64), (48, 48)} <= buckets
    batches = [t.state.order.next_batch() for _ in range(len(t.state.order.plan(0)))]
    assert all(len({t.data.entries[i].bucket for i in b}) == 1 for b in batches)
    assert max(len(b) for b in batches) == 4
    t.cleanup()
    out = run_training(cfg)
    assert out.is_file()
    lines = (out.parent / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6


def test_several_datasets_keep_their_own_trigger_repeats_and_dropout(make_config, mixed_dir, dataset_dir):
    cfg = make_config(
        {
            "datasets": [
                {
                    "folder_path": str(mixed_dir),
                    "resolution": 48,
                    "num_repeats": 3,
                    "trigger_word": "sks",
                    "caption_dropout_rate": 1.0,
                },
                {"folder_path": str(dataset_dir), "resolution": 32, "caption_dropout_rate": 0.0},
            ]
        }
    )
    data = TrainData(cfg, builtin_tiny_path(), CPU)
    first, second = [[e for e in data.entries if e.dataset == d] for d in (0, 1)]
    assert len(first) == 8 and all(e.caption.startswith("sks shape") for e in first)
    assert len(second) == 4 and all(e.caption.startswith("zlr, a colour swatch") for e in second)
    order = data.order()
    drawn = [i for b in order.plan(0) for i in b]
    assert len(drawn) == 8 * 3 + 4 and all(drawn.count(i) == 3 for i in range(8))
    data.prepare_latents(_vae())
    data.prepare_text(lambda: load_text_encoder(builtin_tiny_path(), torch.float32))
    g = torch.Generator().manual_seed(0)
    caps = data.captions(list(range(12)), g)
    assert all(torch.equal(c, data.embedding("")) for c in caps[:8])  # dataset 0: always dropped
    assert all(torch.equal(c, data.embedding(data.entries[i].caption)) for i, c in enumerate(caps) if i >= 8)


def test_cli_reports_a_dataset_without_usable_images_with_exit_code_2(make_config, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_text("not an image")
    Image.new("RGB", (20, 20)).save(tmp_path / "bad" / "small.png")
    cfg = make_config({"datasets": [{"folder_path": str(tmp_path / "bad"), "resolution": 32}]}, as_dict=True)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([*ZLORA, "train", str(path)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no usable image" in r.stderr and "a.jpg" in r.stderr and "small.png (20x20)" in r.stderr


def test_component_identity_uses_the_manifest_hash_when_there_is_one(tiny_dir, tmp_path):
    from zlora.data.cache import fingerprint
    from zlora.hub.manifest import sha256_file, write_manifest

    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    sampled = fingerprint(model / "vae")
    files = {
        str(p.relative_to(model)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in (model / "vae").rglob("*")
        if p.is_file()
    }
    write_manifest(model, {"repo": "a/b", "commit": "0" * 40, "files": files})
    listed = fingerprint(model / "vae")
    assert listed != sampled
    weights = next(iter(k for k in files if k.endswith(".safetensors")))
    files[weights]["sha256"] = "f" * 64  # a change the manifest knows of, wherever it is in the file
    write_manifest(model, {"repo": "a/b", "commit": "0" * 40, "files": files})
    assert fingerprint(model / "vae") != listed
