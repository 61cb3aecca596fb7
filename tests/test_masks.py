"""Masked loss (issue 26, item 3): ai-toolkit's mask_path / alpha_mask / mask_min_value. A mask follows its image
through the bucket's crop, the resize and the flip onto the latent grid; it weights the loss per latent pixel;
masks are cached with the latents under their own key; a missing or mismatched mask is named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from zlora.config import parse_config
from zlora.data.loader import TrainData
from zlora.data.masks import mask_grid
from zlora.errors import UserError
from zlora.train.losses import sample_loss

CPU = torch.device("cpu")


def _vae(folder):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(folder, subfolder="vae")


def _png(path, array) -> None:
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def _halves(folder, n: int, right, mask_dir=None, size: int = 64) -> None:
    """``n`` images: a coloured square on the left half, ``right(i)`` (an HxW/2x3 array) on the right; with
    ``mask_dir``, masks that keep the left half."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = np.zeros((size, size, 3), np.uint8)
        a[:, : size // 2] = (30 + 40 * i, 60, 200 - 30 * i)
        a[8:24, 8 + 2 * i : 24 + 2 * i] = 255
        a[:, size // 2 :] = right(i)
        _png(folder / f"{i}.png", a)
        (folder / f"{i}.txt").write_text(f"a zlr swatch {i}")
        if mask_dir is not None:
            mask_dir.mkdir(parents=True, exist_ok=True)
            m = np.zeros((size, size), np.uint8)
            m[:, : size // 2] = 255
            _png(mask_dir / f"{i}.png", m)


def test_a_mask_is_cropped_resized_and_flipped_with_its_image_onto_the_latent_grid():
    m = np.zeros((48, 96), np.uint8)  # 2:1, white on x in [24, 48): the left half of the centre square
    m[:, 24:48] = 255
    data = Image.fromarray(m)
    import io

    buf = io.BytesIO()
    data.save(buf, format="PNG")
    grid = mask_grid(buf.getvalue(), False, (48, 48), False, 4, "m.png")
    assert grid.shape == (1, 12, 12)
    assert torch.equal(grid[0, :, :6], torch.ones(12, 6)) and torch.equal(grid[0, :, 6:], torch.zeros(12, 6))
    flipped = mask_grid(buf.getvalue(), False, (48, 48), True, 4, "m.png")
    assert torch.equal(flipped, grid.flip(-1))
    # a stroke thinner than a latent pixel keeps its share (area mean), not 0 or 1
    m = np.zeros((48, 48), np.uint8)
    m[:, 1] = 255
    buf = io.BytesIO()
    Image.fromarray(m).save(buf, format="PNG")
    assert mask_grid(buf.getvalue(), False, (48, 48), False, 4, "m.png")[0, 0, 0].item() == pytest.approx(
        0.25
    )


def test_masks_of_a_dataset_follow_flips_are_cached_and_a_changed_mask_is_read_again(tmp_path, tiny_dir):
    images, masks = tmp_path / "img", tmp_path / "masks"
    _halves(images, 2, lambda i: 128, masks, size=64)

    def data():
        cfg = parse_config(
            {
                "job": {"trigger_word": "zlr", "output_dir": str(tmp_path / "out")},
                "datasets": [
                    {"folder_path": str(images), "mask_path": str(masks), "resolution": 64, "flip_x": True}
                    | {"cache_latents": True, "mask_min_value": 0.25}
                ],
            }
        )
        d = TrainData(cfg, tiny_dir, CPU)
        d.prepare_latents(_vae(tiny_dir))
        return d

    d = data()
    assert len(d.entries) == 4  # 2 images x (plain, flipped)
    w = {(e.image.name, e.flip): m for e, m in zip(d.entries, d.loss_masks(list(range(4))), strict=True)}
    plain, flipped = w[("0.png", False)], w[("0.png", True)]
    assert plain.shape == (1, 8, 8)  # the tiny VAE: 64 px -> 8 latent pixels
    assert torch.equal(plain[0, :, :4], torch.ones(8, 4))  # white: weight 1
    assert torch.equal(plain[0, :, 4:], torch.full((8, 4), 0.25))  # black: mask_min_value
    assert torch.equal(flipped, plain.flip(-1))
    cached = sorted((images / "_zlora_cache" / "latents").rglob("*.safetensors"))
    assert len(cached) == 6  # 4 latents + 2 masks (both images' masks are the same file content)

    inverted = np.zeros((64, 64), np.uint8)
    inverted[:, 32:] = 255
    _png(masks / "0.png", inverted)
    d = data()
    w = {(e.image.name, e.flip): m for e, m in zip(d.entries, d.loss_masks(list(range(4))), strict=True)}
    assert torch.equal(w[("0.png", False)][0, :, 4:], torch.ones(8, 4))  # the new mask, not a stale entry
    assert len(sorted((images / "_zlora_cache" / "latents").rglob("*.safetensors"))) == 8


def test_masked_loss_counts_only_the_pixels_the_mask_keeps():
    cfg = parse_config({"datasets": [{"folder_path": "x"}]}).train
    pred = torch.randn(4, 8, 8, requires_grad=True)
    target = torch.randn(4, 8, 8)
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :3] = 1
    loss = sample_loss(pred, target, cfg, mask)
    assert loss.item() == pytest.approx(((pred - target)[:, :, :3] ** 2).mean().item(), rel=1e-6)
    loss.backward()
    assert torch.count_nonzero(pred.grad[:, :, 3:]) == 0 and torch.count_nonzero(pred.grad[:, :, :3]) > 0
    for loss_type in ("mae", "huber"):
        kind = cfg.model_copy(update={"loss_type": loss_type})
        half = sample_loss(pred, target, kind, mask)
        assert half.item() == pytest.approx(
            sample_loss(pred[:, :, :3], target[:, :, :3], kind).item(), rel=1e-6
        )
    assert sample_loss(pred, target, cfg, torch.ones(1, 8, 8)).item() == pytest.approx(
        sample_loss(pred, target, cfg).item(), rel=1e-6
    )


def _masked_config(tmp_path, images, masks, **ds):
    return {
        "job": {"trigger_word": "zlr", "output_dir": str(tmp_path / "out"), "device": "cpu"},
        "model": {"name_or_path": "builtin:tiny", "dtype": "fp32"},
        "datasets": [{"folder_path": str(images), "mask_path": str(masks) if masks else None, **ds}],
    }


def test_a_missing_or_mismatched_mask_is_named(tmp_path):
    images, masks = tmp_path / "img", tmp_path / "masks"
    _halves(images, 3, lambda i: 0, masks)
    (masks / "1.png").unlink()
    _png(masks / "2.png", np.zeros((20, 64), np.uint8))
    cfg = parse_config(_masked_config(tmp_path, images, masks))
    with pytest.raises(UserError) as e:
        TrainData(cfg, tmp_path, CPU)
    msg = str(e.value)
    assert msg.startswith("datasets[0].mask_path: 1.png has no mask; 2.png is 64x20 but 2.png is 64x64;"), msg
    assert str(masks) in msg

    with pytest.raises(UserError, match=r"datasets\[0\].alpha_mask: 0.png has no alpha channel"):
        TrainData(parse_config(_masked_config(tmp_path, images, None, alpha_mask=True)), tmp_path, CPU)
    with pytest.raises(UserError, match="either mask_path .* or alpha_mask"):
        parse_config(_masked_config(tmp_path, images, masks, alpha_mask=True))


def test_a_missing_mask_folder_or_one_inside_the_dataset_is_refused_before_training(tmp_path):
    from zlora.config.load import check_paths

    images = tmp_path / "img"
    _halves(images, 1, lambda i: 0, images / "masks")
    with pytest.raises(UserError, match=r"`datasets\[0\].mask_path` does not exist: .*nowhere"):
        check_paths(parse_config(_masked_config(tmp_path, images, tmp_path / "nowhere")))
    with pytest.raises(UserError, match="masks would be trained as pictures"):
        check_paths(parse_config(_masked_config(tmp_path, images, images / "masks", include_subfolders=True)))


def test_alpha_mask_reads_the_images_own_alpha(tmp_path, tiny_dir):
    images = tmp_path / "img"
    images.mkdir()
    a = np.zeros((64, 64, 4), np.uint8)
    a[..., :3] = (200, 40, 40)
    a[:, :16, 3] = 255  # opaque on the left quarter
    Image.fromarray(a, "RGBA").save(images / "0.png")
    cfg = parse_config(_masked_config(tmp_path, images, None, alpha_mask=True, resolution=64))
    d = TrainData(cfg, tiny_dir, CPU)
    d.prepare_latents(_vae(tiny_dir))
    (m,) = d.loss_masks([0])
    assert torch.equal(m[0, :, :2], torch.ones(8, 2)) and torch.equal(m[0, :, 2:], torch.zeros(8, 6))


def _half_losses(t) -> tuple[float, float]:
    """The model's loss on the left and on the right half of the latents of its own training entries, at fixed
    sigmas and noise (the same inputs before and after training)."""
    from zlora.models import zimage

    left = right = 0.0
    with torch.no_grad():
        for i, e in enumerate(t.data.entries):
            x0 = t.data.latents([i], t.parts.vae)[0]
            cap = t.data.embedding(e.caption)
            g = torch.Generator().manual_seed(i)
            noise = torch.randn(x0.shape, generator=g)
            sigmas = torch.tensor([0.4, 0.7, 0.9])
            pred = zimage.predict(
                t.transformer,
                [zimage.noisy_latents(x0, noise, s) for s in sigmas],
                sigmas,
                [cap] * 3,
                t.dtype,
            )
            for p in pred:
                err = (p.float() - zimage.velocity_target(x0, noise)) ** 2
                w = err.shape[-1] // 2
                left += err[..., :w].mean().item()
                right += err[..., w:].mean().item()
    return left, right


def _learned(make_config, tmp_path, masked: bool) -> tuple[float, float]:
    """Relative loss drop on the (kept) left and the (masked-out) right half over 16 steps: images whose left
    halves differ and whose right halves are all the same green, masked to the left half or not."""
    from zlora.train.trainer import Trainer

    name = "masked" if masked else "plain"
    images, masks = tmp_path / name / "img", tmp_path / name / "masks"
    _halves(images, 4, lambda i: (20, 200, 40), masks if masked else None)
    ds = {"folder_path": str(images), "resolution": 64, "caption_dropout_rate": 0.0}
    if masked:
        ds["mask_path"] = str(masks)
    cfg = make_config(
        {
            "job": {
                "name": name,
                "output_dir": str(tmp_path / "out"),
                "trigger_word": "zlr",
                "device": "cpu",
            },
            "model": {"name_or_path": "builtin:shapes", "dtype": "fp32"},
            "train": {"steps": 16, "batch_size": 2, "lr": 2e-2},
            "datasets": [ds],
        }
    )
    t = Trainer(cfg)
    t.setup()
    (l0, r0), _ = _half_losses(t), t.train()
    l1, r1 = _half_losses(t)
    return 1 - l1 / l0, 1 - r1 / r0


def test_pixels_outside_the_mask_do_not_train(make_config, tmp_path):
    """Masked to the left half, the LoRA learns the left halves and not the green right halves it never gets a
    loss on; unmasked, it learns both. (The literal "same LoRA whatever the masked-out half shows" cannot hold:
    the transformer sees the whole image, and through attention and the VAE's receptive field the masked-out
    half changes the kept half's gradient; only the loss is masked, as in ai-toolkit. Measured on the tiny model:
    LoRAs of noise vs another picture behind the mask differ by 75% masked and unmasked alike.)"""
    plain_left, plain_right = _learned(make_config, tmp_path, masked=False)
    masked_left, masked_right = _learned(make_config, tmp_path, masked=True)
    print(
        f"loss drop left/right: plain {plain_left:.3f}/{plain_right:.3f}, masked {masked_left:.3f}/{masked_right:.3f}"
    )
    assert plain_left > 0.05 and masked_left > 0.05  # both learn what the loss sees
    assert plain_right > 0.05
    assert masked_right < 0.1 * plain_right, (masked_right, plain_right)
