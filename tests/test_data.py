import pytest
import torch
from PIL import Image

from zlora.config import parse_config
from zlora.data.dataset import BatchOrder, load_image, load_samples, scan_dataset
from zlora.errors import UserError


def _ds(folder, **kw):
    return parse_config({"datasets": [{"folder_path": str(folder), **kw}]}).datasets[0]


def test_scan_pairs_captions_default_caption_and_resolutions(tmp_path):
    Image.new("RGB", (40, 30), "red").save(tmp_path / "b.PNG")
    Image.new("RGB", (40, 30), "blue").save(tmp_path / "a.jpg")
    (tmp_path / "a.caption").write_text("  a blue thing \n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored")
    samples = scan_dataset(
        _ds(tmp_path, caption_ext=".caption", default_caption="fallback", resolution=[16, 32])
    )
    assert [(s.image.name, s.caption, s.resolution) for s in samples] == [
        ("a.jpg", "a blue thing", 16), ("a.jpg", "a blue thing", 32),
        ("b.PNG", "fallback", 16), ("b.PNG", "fallback", 32),
    ]  # fmt: skip


def test_empty_folder_and_non_utf8_caption_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="has no images"):
        scan_dataset(_ds(tmp_path))
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "x.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match=r"x\.txt.*not UTF-8"):
        scan_dataset(_ds(tmp_path))


def test_transparency_is_composited_on_white_and_exif_rotation_applied(tmp_path):
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    px = load_image(tmp_path / "clear.png", 16)
    assert px.shape == (3, 16, 16) and torch.allclose(px, torch.ones_like(px))
    im = Image.new("RGB", (40, 20), "black")
    im.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed: the white half ends up on top
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    up = load_image(tmp_path / "rot.jpg", 16)
    assert up[:, :4].mean() > 0.5 and up[:, -4:].mean() < -0.5


def test_bad_files_are_skipped_with_a_summary_unless_all_are_bad(tmp_path, caplog):
    Image.new("RGB", (32, 32), "green").save(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "cut.png").write_bytes((tmp_path / "good.png").read_bytes()[:40])
    kept, pixels = load_samples(scan_dataset(_ds(tmp_path, resolution=16)))
    assert [s.image.name for s in kept] == ["good.png"] and pixels[0].shape == (3, 16, 16)
    assert "3 of 4 images skipped" in caplog.text
    (tmp_path / "good.png").unlink()
    with pytest.raises(UserError, match="no usable image"):
        load_samples(scan_dataset(_ds(tmp_path, resolution=16)))


def test_batch_order_covers_each_epoch_and_resumes_from_its_state():
    order = BatchOrder(5, seed=1)
    first_epoch = order.next_batch(3) + order.next_batch(2)
    assert sorted(first_epoch) == [0, 1, 2, 3, 4]
    order.next_batch(2)
    saved = order.state_dict()
    expected = [order.next_batch(3) for _ in range(4)]
    again = BatchOrder(5, seed=1)
    again.load_state_dict(saved)
    assert [again.next_batch(3) for _ in range(4)] == expected
    with pytest.raises(UserError, match="dataset now has 6"):
        BatchOrder(6, seed=1).load_state_dict(saved)
