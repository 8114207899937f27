"""Inputs that must not hurt (shared/spec/inputs-and-faults.md)."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harmony.data.io import atomic_path, binarize, check_same_size, read_mask, read_rgb, save_rgb
from harmony.errors import HarmonyInputError


def _gradient(height: int = 6, width: int = 8) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([yy * 30, xx * 30, (yy + xx) * 10], axis=-1).astype(np.uint8)


def test_exif_orientation_is_applied_to_image_and_mask(tmp_path: Path) -> None:
    pixels = _gradient()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    Image.fromarray(pixels).save(tmp_path / "image.jpg", exif=exif, quality=100)
    Image.fromarray((pixels[..., 0] > 60).astype(np.uint8) * 255).save(tmp_path / "mask.png", exif=exif)
    image, mask = read_rgb(tmp_path / "image.jpg"), read_mask(tmp_path / "mask.png")
    assert image.shape == (8, 6, 3) and mask.shape == (8, 6)
    np.testing.assert_array_equal(mask, (np.rot90(pixels[..., 0], k=-1) > 60).astype(np.float32))


def test_rgba_keeps_colour_channels_and_alpha_becomes_the_mask(tmp_path: Path) -> None:
    rgba = np.dstack([_gradient(), np.zeros((6, 8), np.uint8)])
    rgba[2:4, 2:6, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "cutout.png"), _gradient())
    assert read_mask(tmp_path / "cutout.png").sum() == 8


def test_opaque_rgba_mask_uses_luminance(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[1:3, 1:3, :3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "mask.png")
    assert read_mask(tmp_path / "mask.png").sum() == 4


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    gray16 = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "gray16.png")
    image = read_rgb(tmp_path / "gray16.png")
    np.testing.assert_array_equal(image[..., 0], np.round(gray16 / 257).astype(np.uint8))
    assert image.max() < 255  # clipping would saturate everything above 255


def test_sixteen_bit_rgb_png(tmp_path: Path) -> None:
    import cv2

    rgb16 = np.zeros((3, 5, 3), np.uint16)
    rgb16[..., 0], rgb16[..., 2] = 65535, 257 * 10
    cv2.imwrite(str(tmp_path / "rgb16.png"), cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    image = read_rgb(tmp_path / "rgb16.png")
    assert image.dtype == np.uint8 and tuple(image[0, 0]) == (255, 0, 10)


def test_grayscale_and_cmyk(tmp_path: Path) -> None:
    Image.fromarray(np.full((3, 3), 77, np.uint8)).save(tmp_path / "gray.png")
    assert (read_rgb(tmp_path / "gray.png") == 77).all()
    Image.new("CMYK", (3, 3), (0, 255, 255, 0)).save(tmp_path / "red.jpg")
    red = read_rgb(tmp_path / "red.jpg")
    assert red.shape == (3, 3, 3) and red[..., 0].min() > 200 and red[..., 1:].max() < 60


def test_missing_and_undecodable_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(HarmonyInputError, match="nothing.png: file not found"):
        read_rgb(tmp_path / "nothing.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(HarmonyInputError, match="broken.jpg: cannot decode"):
        read_rgb(tmp_path / "broken.jpg")


def test_size_mismatch_names_both_files() -> None:
    with pytest.raises(HarmonyInputError, match=r"m.png: mask is 4x3 but image c.jpg is 5x3"):
        check_same_size("c.jpg", np.zeros((3, 5, 3)), "m.png", np.zeros((3, 4)))


def test_binarize_threshold_is_127_on_eight_bits() -> None:
    assert binarize(np.array([127, 128]) / 255.0).tolist() == [0.0, 1.0]


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    save_rgb(target, _gradient())
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(target.read_bytes()))), _gradient())


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_and_folders_get_the_umask_permissions(umask: int, tmp_path: Path) -> None:
    """Not the private 0o600 / 0o700 of the temporary names they are written under."""
    from harmony.commands.import_weights import write_folder
    from harmony.data.io import save_json

    previous = os.umask(umask)
    try:
        save_rgb(tmp_path / "image.png", _gradient())
        save_json(tmp_path / "metrics.json", {"mse": 1.0})
        write_folder(tmp_path / "folder", lambda staging: (staging / "config.json").write_text("{}"))
    finally:
        os.umask(previous)
    for name in ("image.png", "metrics.json", "folder/config.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~umask
