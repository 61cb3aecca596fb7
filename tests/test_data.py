import math

import numpy as np
import pytest
import torch
from PIL import Image

from zlora.config import parse_config
from zlora.data.buckets import BucketBatches, assign_bucket, bucket_sizes, crop_box
from zlora.data.dataset import decode_image, image_size, list_images, scan_dataset, to_pixels
from zlora.errors import UserError


def _ds(folder, **kw):
    return parse_config({"datasets": [{"folder_path": str(folder), **kw}]}).datasets[0]


def _captions(folder, trigger=None, **kw):
    return {e.image.name: e.caption for e in scan_dataset(_ds(folder, **kw), 0, trigger).entries}


def test_scan_pairs_captions_default_caption_and_extensions(tmp_path):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "b.PNG")
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "a.JPEG")
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "c.webp")
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "d.bmp")
    (tmp_path / "a.caption").write_text("  a blue thing \n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored")
    scan = scan_dataset(
        _ds(tmp_path, caption_ext=".caption", default_caption="fallback", resolution=[16, 32]), 0, None
    )
    assert [(e.image.name, e.caption, e.bucket) for e in scan.entries] == [
        ("a.JPEG", "a blue thing", (16, 16)),
        ("a.JPEG", "a blue thing", (32, 32)),
        ("b.PNG", "fallback", (16, 16)),
        ("b.PNG", "fallback", (32, 32)),
        ("c.webp", "fallback", (16, 16)),
        ("c.webp", "fallback", (32, 32)),
        ("d.bmp", "fallback", (16, 16)),
        ("d.bmp", "fallback", (32, 32)),
    ]


def test_trigger_word_replaced_prepended_switchable_and_overridable(tmp_path):
    for name, text in {
        "a": "photo of [trigger] on a beach",
        "b": "a cat",
        "c": "zlr in snow",
        "d": "",
    }.items():
        Image.new("RGB", (32, 32)).save(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.txt").write_text(text, encoding="utf-8")
    assert _captions(tmp_path, "zlr", resolution=16) == {
        "a.png": "photo of zlr on a beach",
        "b.png": "zlr, a cat",
        "c.png": "zlr in snow",
        "d.png": "zlr",
    }
    assert _captions(tmp_path, "zlr", resolution=16, add_trigger_word=False)["b.png"] == "a cat"
    own = _captions(tmp_path, "zlr", resolution=16, trigger_word="sks")  # per-dataset override wins
    assert own["a.png"] == "photo of sks on a beach" and own["c.png"] == "sks, zlr in snow"
    assert _captions(tmp_path, "zl", resolution=16)["c.png"] == "zl, zlr in snow"  # whole words only
    with pytest.raises(UserError, match=r"a\.txt: caption uses \[trigger\] but no trigger word"):
        _captions(tmp_path, None, resolution=16)


def test_subfolders_are_a_switch_and_the_cache_folder_is_never_an_image_source(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "top.png")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "sub" / "deep.png")
    (tmp_path / "_zlora_cache").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "_zlora_cache" / "x.png")
    assert [p.name for p in list_images(_ds(tmp_path))] == ["top.png"]
    assert [p.name for p in list_images(_ds(tmp_path, include_subfolders=True))] == ["deep.png", "top.png"]


def test_missing_or_empty_folder_and_non_utf8_caption_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"datasets\[0\]\.folder_path.*does not exist"):
        list_images(_ds(tmp_path / "nope"))
    with pytest.raises(UserError, match="has no images"):
        list_images(_ds(tmp_path))
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "x.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match=r"x\.txt.*not UTF-8"):
        scan_dataset(_ds(tmp_path), 0, None)


def test_image_modes_are_converted_correctly(tmp_path):
    def decoded(im, fmt="PNG", **kw):
        path = tmp_path / f"im.{fmt.lower()}"
        im.save(path, format=fmt, **kw)
        return np.asarray(decode_image(path.read_bytes()), dtype=np.int32)

    assert (decoded(Image.new("RGBA", (4, 4), (255, 0, 0, 0))) == 255).all()  # transparent -> white
    assert (decoded(Image.new("RGBA", (4, 4), (255, 0, 0, 255))) == [255, 0, 0]).all()
    assert (decoded(Image.new("LA", (4, 4), (0, 0))) == 255).all()
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    assert (decoded(pal, transparency=1) == 255).all() and (decoded(pal) == [0, 0, 255]).all()
    cmyk = decoded(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), fmt="JPEG", quality=100)
    assert abs(cmyk[..., 0].mean() - 255) < 3 and cmyk[..., 1:].mean() < 3  # cyan-free magenta+yellow = red
    grey16 = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    assert abs(decoded(grey16).mean() - 128) < 1  # 16 bits scaled to 8, not clipped to white


def test_exif_rotation_is_applied_to_the_size_and_the_pixels(tmp_path):
    im = Image.new("RGB", (40, 20), "black")
    im.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed: the white half ends up on top
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    assert image_size(tmp_path / "rot.jpg") == (20, 40)
    up = np.asarray(decode_image((tmp_path / "rot.jpg").read_bytes()), dtype=np.float32)
    assert up.shape == (40, 20, 3) and up[:10].mean() > 200 and up[-10:].mean() < 50


def test_buckets_have_sides_of_16_about_the_area_and_the_closest_ratio():
    for res in (256, 512, 1024):
        sizes = bucket_sizes(res)
        assert all(w % 16 == 0 and h % 16 == 0 and w * h <= res * res for w, h in sizes)
        assert all(w * h >= 0.85 * res * res for w, h in sizes if 0.5 <= w / h <= 2)
    assert assign_bucket(1024, 1024, 1024) == (1024, 1024)
    for w, h in [(1536, 1024), (1920, 1080), (3000, 4000), (4000, 1000)]:
        bw, bh = assign_bucket(w, h, 1024)
        best = min(abs(math.log(a / b) - math.log(w / h)) for a, b in bucket_sizes(1024))
        assert abs(math.log(bw / bh) - math.log(w / h)) == best
    assert assign_bucket(900, 900, 1024) is None  # never upscaled
    assert assign_bucket(900, 900, 512) == (512, 512)


def test_crop_is_minimal_and_flip_mirrors():
    box = crop_box(300, 100, (64, 32))  # 3:1 image into a 2:1 bucket: full height, centred width
    assert box == pytest.approx((50, 0, 250, 100))
    im = Image.new("RGB", (300, 100), "black")
    im.paste((255, 255, 255), (50, 0, 100, 100))  # white strip at the left edge of the kept region
    px = to_pixels(im, (64, 32), flip=False)
    assert px.shape == (3, 32, 64) and px[:, :, :12].mean() > 0.9 and px[:, :, -12:].mean() < -0.9
    assert torch.equal(to_pixels(im, (64, 32), flip=True), px.flip(-1))


def test_bucket_batches_use_one_bucket_cover_each_epoch_with_repeats_and_resume():
    buckets = ["a"] * 5 + ["b"] * 3 + ["c"]
    order = BucketBatches(buckets, batch_size=2, seed=1, repeats=[1] * 8 + [3])
    epoch = [order.next_batch() for _ in range(len(order.plan(0)))]
    assert all(len({buckets[i] for i in b}) == 1 for b in epoch)
    assert sorted(i for b in epoch for i in b) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 8]
    assert order.plan(1) != order.plan(0)  # reshuffled every epoch
    order.next_batch()
    saved = order.state_dict()
    expected = [order.next_batch() for _ in range(9)]
    again = BucketBatches(buckets, batch_size=2, seed=1, repeats=[1] * 8 + [3])
    again.load_state_dict(saved)
    assert [again.next_batch() for _ in range(9)] == expected
    with pytest.raises(UserError, match="batch size or seed changed"):
        BucketBatches(buckets, batch_size=3, seed=1, repeats=[1] * 8 + [3]).load_state_dict(saved)
