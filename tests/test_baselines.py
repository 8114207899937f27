"""The training-free baselines at full resolution, and the real-composites benchmark that compares them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import color
from skimage.exposure import match_histograms

from harmony.commands.harmonize import main as harmonize_main
from harmony.data import types as keys
from harmony.data.composites import blend
from harmony.data.io import read_mask, read_rgb
from harmony.methods import Composite, HistogramMatching, ReinhardLabTransfer
from harmony.methods.base import to_uint8
from tests.conftest import REPO_ROOT
from tests.fixtures.trees import make_iharmony4_tree


def blocky_image(height: int, width: int, block: int, seed: int) -> np.ndarray:
    """Random colours in flat ``block``-px squares: varied pixels that PNG and JPEG still code fast."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (height // block + 1, width // block + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(cells.repeat(block, 0).repeat(block, 1)[:height, :width])


def soft_rectangle(height: int, width: int, feather: int = 0) -> np.ndarray:
    """A centred rectangle covering about a quarter of the image, with a linear soft edge."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    inside = np.minimum(
        np.minimum(yy - height / 4, 3 * height / 4 - yy), np.minimum(xx - width / 4, 3 * width / 4 - xx)
    )
    return np.clip(inside / feather + 0.5, 0, 1) if feather else (inside >= 0).astype(np.float32)


def tinted(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with its foreground recoloured, so matching it to the background changes something."""
    changed = np.clip(image * np.array([1.3, 0.9, 0.6]) + 20, 0, 255).astype(np.uint8)
    return np.where(mask[..., None] >= 0.5, changed, image)


def working_size_statistics(
    composite: np.ndarray, mask: np.ndarray, size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """The foreground and background pixels at the working size (PIL bilinear, nearest mask at 0.5)."""
    small = np.asarray(Image.fromarray(composite).resize((size, size), Image.BILINEAR))
    quantised = Image.fromarray((mask * 255 + 0.5).astype(np.uint8)).resize((size, size), Image.NEAREST)
    region = np.asarray(quantised) >= 128
    pixels = small.astype(np.float32) / 255
    return pixels[region], pixels[~region]


def quantise(pixels: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(pixels, 0, 1).astype(np.float32) * np.float32(255) + np.float32(0.5)).astype(
        np.uint8
    )


def soft_paste(harmonized: np.ndarray, composite: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask[..., None] > 0, blend(harmonized, composite, mask), composite)


# --- Composite is the input, bit for bit --------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_composite_through_harmonize_cli_is_the_input(suffix: str, tmp_path: Path) -> None:
    image = blocky_image(3000, 4000, 32, seed=0)
    composite_path, mask_path, output = tmp_path / f"c{suffix}", tmp_path / "m.png", tmp_path / "out.png"
    Image.fromarray(image).save(composite_path, quality=90)
    Image.fromarray((soft_rectangle(3000, 4000, feather=8) * 255).astype(np.uint8)).save(mask_path)
    arguments = ["--method", "Composite", "--composite", str(composite_path), "--mask", str(mask_path)]
    assert harmonize_main([*arguments, "--output", str(output), "--device", "cpu"]) == 0
    np.testing.assert_array_equal(read_rgb(output), read_rgb(composite_path))


def test_composite_predict_writes_the_original_pixels(tmp_path: Path) -> None:
    image = blocky_image(300, 410, 7, seed=1)
    Image.fromarray(image).save(tmp_path / "c.jpg", quality=80)
    Image.fromarray((soft_rectangle(300, 410, feather=5) * 255).astype(np.uint8)).save(tmp_path / "m.png")
    model = Composite(predictions_dir=str(tmp_path / "predictions"))
    batch = {
        keys.NAME: ["c"],
        keys.COMPOSITE: torch.rand(1, 3, 32, 32),
        keys.MASK: torch.ones(1, 1, 32, 32),
        keys.COMPOSITE_PATH: [str(tmp_path / "c.jpg")],
        keys.MASK_PATH: [str(tmp_path / "m.png")],
    }
    (written,) = model.predict_step(batch, 0)
    np.testing.assert_array_equal(read_rgb(written), read_rgb(tmp_path / "c.jpg"))


# --- foreground transfers: estimated at 256 px, applied at full resolution ----------------------------
def test_reinhard_applies_working_size_statistics_to_the_full_image() -> None:
    height, width = 600, 800
    mask = soft_rectangle(height, width, feather=6)
    composite = tinted(blocky_image(height, width, 5, seed=2), mask)
    foreground, background = working_size_statistics(composite, mask)
    foreground_lab, background_lab = color.rgb2lab(foreground[None])[0], color.rgb2lab(background[None])[0]
    mean, std = foreground_lab.mean(axis=0), foreground_lab.std(axis=0) + 1e-3
    target_mean, target_std = background_lab.mean(axis=0), background_lab.std(axis=0) + 1e-3
    lab = color.rgb2lab(composite.astype(np.float32) / 255)
    harmonized = quantise(color.lab2rgb((lab - mean) * (target_std / std) + target_mean))
    expected = soft_paste(harmonized, composite, mask)

    output = ReinhardLabTransfer().harmonize_image(composite, mask)
    np.testing.assert_array_equal(output, expected)
    np.testing.assert_array_equal(output[mask == 0], composite[mask == 0])
    assert (output[mask == 1] != composite[mask == 1]).any()


def test_histogram_matching_applies_its_lookup_table_at_full_resolution() -> None:
    height, width = 600, 800
    mask = soft_rectangle(height, width, feather=6)
    composite = tinted(blocky_image(height, width, 3, seed=3), mask)
    foreground, background = working_size_statistics(composite, mask)
    # Levels the working size lacks are interpolated in the table: make sure some occur.
    assert np.setdiff1d(composite[mask > 0], np.round(foreground * 255)).size > 0
    matched = match_histograms(foreground[:, None], background[:, None], channel_axis=-1)[:, 0]
    levels = np.arange(256, dtype=np.float32) / 255
    columns = []
    for channel in range(3):
        seen, first = np.unique(foreground[:, channel], return_index=True)
        columns.append(np.interp(levels, seen, matched[first, channel]))
    table = np.stack(columns, axis=-1)
    harmonized = quantise(table)[composite, np.arange(3)]
    expected = soft_paste(harmonized, composite, mask)

    model = HistogramMatching()
    output = model.harmonize_image(composite, mask)
    np.testing.assert_array_equal(output, expected)
    np.testing.assert_array_equal(output[mask == 0], composite[mask == 0])
    # The table is the map itself sampled at the 8-bit levels: the float path gives the same pixels.
    transform = model.estimate_image(composite, mask)
    touched = composite[mask > 0]
    np.testing.assert_array_equal(
        model.apply_uint8(transform, touched), quantise(model.apply(transform, touched / np.float32(255)))
    )


def test_histogram_matching_on_a_batch_is_scikit_image_match_histograms() -> None:
    rng = np.random.default_rng(4)
    composite = torch.from_numpy(rng.uniform(0, 1, (2, 3, 40, 40)).astype(np.float32))
    mask = torch.zeros(2, 1, 40, 40)
    mask[:, :, 8:30, 5:25] = 1
    output = HistogramMatching().harmonize({keys.COMPOSITE: composite, keys.MASK: mask})
    for index in range(2):
        image, region = composite[index].permute(1, 2, 0).numpy(), mask[index, 0].numpy() == 1
        expected = image.copy()
        expected[region] = match_histograms(image[region][:, None], image[~region][:, None], channel_axis=-1)[
            :, 0
        ]
        np.testing.assert_array_equal(output[index].permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("method", [Composite, ReinhardLabTransfer, HistogramMatching])
def test_test_predict_and_harmonize_agree_at_the_working_size(method: type, tmp_path: Path) -> None:
    mask = soft_rectangle(256, 256)
    composite = tinted(blocky_image(256, 256, 4, seed=5), mask)
    Image.fromarray(composite).save(tmp_path / "c.png")
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "m.png")
    model = method(predictions_dir=str(tmp_path / "predictions"))
    batch = {
        keys.NAME: ["c"],
        keys.COMPOSITE: torch.from_numpy(composite).permute(2, 0, 1)[None].float().div(255),
        keys.MASK: torch.from_numpy(mask)[None, None],
        keys.COMPOSITE_PATH: [str(tmp_path / "c.png")],
        keys.MASK_PATH: [str(tmp_path / "m.png")],
    }
    tested = to_uint8(model.harmonize(batch)[0]).permute(1, 2, 0).numpy()
    (written,) = model.predict_step(batch, 0)
    np.testing.assert_array_equal(read_rgb(written), tested)
    np.testing.assert_array_equal(model.harmonize_image(composite, read_mask(tmp_path / "m.png")), tested)
    if method is not Composite:
        assert (tested != composite).any()


# --- benchmarks/real_composites.py ---------------------------------------------------------------------
def load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "real_composites", REPO_ROOT / "benchmarks" / "real_composites.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_composites_benchmark_compares_to_the_composite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_iharmony4_tree(tmp_path / "root", {"HCOCO": (0, 2), "HFlickr": (0, 2)}, size=(64, 48))
    benchmark = load_benchmark()
    arguments = [
        "--data-root",
        str(root),
        "--output",
        str(tmp_path / "r.json"),
        "--work-dir",
        str(tmp_path / "w"),
    ]
    assert benchmark.main([*arguments, "--device", "cpu", "--workers", "1"]) == 0
    table = capsys.readouterr().out
    assert str(root) in table and "4 images" in table
    assert "(1.00x)" in table.splitlines()[3]  # the first group's Composite cells

    methods = json.loads((tmp_path / "r.json").read_text())["methods"]
    assert list(methods) == ["Composite", "ReinhardLabTransfer", "HistogramMatching"]
    composite, reinhard = methods["Composite"]["results"], methods["ReinhardLabTransfer"]["results"]
    assert {"HCOCO", "HFlickr", "all"} <= set(composite)
    assert composite["all"]["n"] == 4
    assert reinhard["all"]["fmse"] != composite["all"]["fmse"]
    for name in ("c0001_1_1", "f0001_1_1"):
        assert (tmp_path / "w" / "Composite" / f"{name}.png").is_file()


def test_real_composites_benchmark_missing_inputs_are_one_line_errors(tmp_path: Path) -> None:
    from harmony.errors import HarmonyInputError

    benchmark = load_benchmark()
    with pytest.raises(HarmonyInputError, match="data root not found"):
        benchmark.main(["--data-root", str(tmp_path / "nowhere")])
    with pytest.raises(HarmonyInputError, match="checkpoint not found"):
        benchmark.main(["--data-root", str(tmp_path), "--checkpoint", str(tmp_path / "missing.ckpt")])
