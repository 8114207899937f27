from __future__ import annotations

import colorsys
import math
from pathlib import Path

import kornia
import numpy as np
import pytest
import torch
from PIL import Image

from harmony.cli import main, make_cli
from harmony.commands.harmonize import main as harmonize_main
from harmony.data.io import read_mask, read_rgb
from harmony.data.records import list_iharmony4
from harmony.errors import HarmonyInputError
from harmony.methods import Composite, ReinhardLabTransfer
from harmony.methods.base import to_uint8
from harmony.postprocess import (
    ColorTransfer,
    ColorTransferCallback,
    make_color_transfer,
    transfer_lightness,
)
from tests.conftest import REPO_ROOT

# Lightness channel of kornia's HSV (H, S, V) and HLS (H, L, S) tensors.
CHANNEL = {"hsv": 2, "hsl": 1}
TO_SPACE = {"hsv": kornia.color.rgb_to_hsv, "hsl": kornia.color.rgb_to_hls}


def scene(
    height: int = 48, width: int = 64, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generated and composite images with independent content and a rectangular foreground.

    The composite's foreground lightness stays within [0.3, 0.6] and its background's has mean ~0.5 and
    std ~0.1, so matching moves values without clamping.
    """
    generator = torch.Generator().manual_seed(seed)
    generated = torch.rand(2, 3, height, width, generator=generator) * 0.8 + 0.1
    composite = torch.rand(2, 3, height, width, generator=generator) * 0.2 + 0.4
    composite[:, :, 10:30, 12:40] = torch.rand(2, 3, 20, 28, generator=generator) * 0.3 + 0.3
    mask = torch.zeros(2, 1, height, width)
    mask[:, :, 10:30, 12:40] = 1
    return generated, composite, mask


def lightness(images: torch.Tensor, space: str) -> torch.Tensor:
    return TO_SPACE[space](images)[:, CHANNEL[space]]


def moments(values: torch.Tensor, region: torch.Tensor) -> tuple[float, float]:
    picked = values[region].double()
    return float(picked.mean()), float(picked.std(unbiased=False))


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


# --- the transfer itself -------------------------------------------------------------------------------
@pytest.mark.parametrize("space", ["hsv", "hsl"])
def test_hue_and_saturation_come_from_the_generated_image(space: str) -> None:
    generated, composite, mask = scene()
    output = transfer_lightness(generated, composite, mask, space=space)
    out, gen = TO_SPACE[space](output), TO_SPACE[space](generated)
    saturation = 1 if space == "hsv" else 2
    light = CHANNEL[space]
    # Away from singular pixels: hue is undefined at zero saturation, HSL saturation at L = 0 or 1.
    regular = (mask[:, 0] >= 0.5) & (gen[:, saturation] > 0.1) & (out[:, light] > 0.1) & (out[:, light] < 0.9)
    assert regular.sum() > 500
    hue_difference = (out[:, 0] - gen[:, 0] + math.pi) % (2 * math.pi) - math.pi
    assert hue_difference[regular].abs().max() < 1e-4
    torch.testing.assert_close(out[:, saturation][regular], gen[:, saturation][regular], atol=1e-4, rtol=0)


@pytest.mark.parametrize("space", ["hsv", "hsl"])
def test_lightness_structure_comes_from_the_composite(space: str) -> None:
    generated, composite, mask = scene()
    output = transfer_lightness(generated, composite, mask, space=space)
    for index in range(2):
        region = mask[index, 0] >= 0.5
        out = lightness(output, space)[index][region]
        assert correlation(out, lightness(composite, space)[index][region]) > 0.9999
        assert abs(correlation(out, lightness(generated, space)[index][region])) < 0.2


@pytest.mark.parametrize("space", ["hsv", "hsl"])
def test_mean_std_matches_the_background_moments(space: str) -> None:
    generated, composite, mask = scene()
    output = transfer_lightness(generated, composite, mask, space=space, match="mean_std")
    for index in range(2):
        region = mask[index, 0] >= 0.5
        mean, std = moments(lightness(output, space)[index], region)
        target_mean, target_std = moments(lightness(composite, space)[index], ~region)
        assert mean == pytest.approx(target_mean, abs=1e-4)
        assert std == pytest.approx(target_std, abs=1e-4)
        assert target_std != pytest.approx(moments(lightness(composite, space)[index], region)[1], abs=1e-2)


@pytest.mark.parametrize("space", ["hsv", "hsl"])
def test_mean_matches_only_the_mean_and_none_keeps_the_composite_lightness(space: str) -> None:
    generated, composite, mask = scene()
    shifted = transfer_lightness(generated, composite, mask, space=space, match="mean")
    kept = transfer_lightness(generated, composite, mask, space=space, match="none")
    for index in range(2):
        region = mask[index, 0] >= 0.5
        source_mean, source_std = moments(lightness(composite, space)[index], region)
        target_mean, _ = moments(lightness(composite, space)[index], ~region)
        mean, std = moments(lightness(shifted, space)[index], region)
        assert mean == pytest.approx(target_mean, abs=1e-4)
        assert std == pytest.approx(source_std, abs=1e-4)
        assert mean != pytest.approx(source_mean, abs=1e-2)
        torch.testing.assert_close(
            lightness(kept, space)[index][region],
            lightness(composite, space)[index][region],
            atol=1e-5,
            rtol=0,
        )


def _oracle(
    generated: np.ndarray, composite: np.ndarray, mask: np.ndarray, space: str, match: str
) -> np.ndarray:
    """A per-pixel reimplementation with Python's colorsys, for ``H×W×3`` float64 images."""
    to_space, from_space = (
        (colorsys.rgb_to_hsv, colorsys.hsv_to_rgb)
        if space == "hsv"
        else (colorsys.rgb_to_hls, colorsys.hls_to_rgb)
    )
    light = 2 if space == "hsv" else 1
    lit = np.array([[to_space(*pixel)[light] for pixel in row] for row in composite])
    region = mask >= 0.5
    if match != "none":
        gain = lit[~region].std() / lit[region].std() if match == "mean_std" else 1.0
        lit = (lit - lit[region].mean()) * gain + lit[~region].mean()
    output = composite.copy()
    for y, x in zip(*np.nonzero(mask > 0), strict=True):
        channels = list(to_space(*generated[y, x]))
        channels[light] = float(np.clip(lit[y, x], 0, 1))
        transferred = np.array(from_space(*channels))
        output[y, x] = composite[y, x] + mask[y, x] * (transferred - composite[y, x])
    return output


@pytest.mark.parametrize("space", ["hsv", "hsl"])
@pytest.mark.parametrize("match", ["mean_std", "mean", "none"])
def test_agrees_with_a_colorsys_reimplementation_with_a_soft_mask(space: str, match: str) -> None:
    rng = np.random.default_rng(1)
    height, width = 13, 17  # odd, non-square
    generated, composite = rng.uniform(0, 1, (2, height, width, 3))
    yy, xx = np.mgrid[0:height, 0:width]
    mask = np.clip(1.5 - np.hypot(yy - 6, xx - 8) / 3, 0, 1)  # soft edge from 1 to 0
    assert ((mask > 0) & (mask < 1)).any()
    expected = _oracle(generated, composite, mask, space, match)

    def tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(image).float().permute(2, 0, 1)[None]

    output = transfer_lightness(
        tensor(generated), tensor(composite), torch.from_numpy(mask).float()[None, None], space, match
    )
    np.testing.assert_allclose(output[0].permute(1, 2, 0).numpy(), expected, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_background_is_the_composite_bit_for_bit(dtype: torch.dtype) -> None:
    generated, composite, mask = scene()
    mask[:, :, 8:10, 10:42] = 0.3  # soft rim
    generated, composite = generated.to(dtype), composite.to(dtype)
    output = transfer_lightness(generated, composite, mask)
    assert output.dtype == dtype
    background = (mask == 0).expand_as(composite)
    assert torch.equal(output[background], composite[background])
    assert not torch.equal(output[~background], composite[~background])


def test_empty_and_full_masks() -> None:
    generated, composite, mask = scene()
    for empty in (torch.zeros_like(mask), torch.full_like(mask, 0.4)):  # no pixel reaches 0.5
        assert torch.equal(transfer_lightness(generated, composite, empty), composite)
    full = transfer_lightness(generated, composite, torch.ones_like(mask), space="hsv")
    assert torch.isfinite(full).all()
    # No background: no matching, the composite's own V.
    torch.testing.assert_close(lightness(full, "hsv"), lightness(composite, "hsv"), atol=1e-5, rtol=0)
    # One image of the batch without foreground leaves the other's result alone.
    mixed = mask.clone()
    mixed[1] = 0
    output = transfer_lightness(generated, composite, mixed)
    assert torch.equal(output[1], composite[1])
    torch.testing.assert_close(output[0], transfer_lightness(generated, composite, mask)[0])


def test_flat_foreground_is_only_shifted() -> None:
    generated, composite, mask = scene()
    composite[:, :, 10:30, 12:40] = 0.2
    output = transfer_lightness(generated, composite, mask)
    assert torch.isfinite(output).all()
    region = mask[0, 0] >= 0.5
    mean, std = moments(lightness(output, "hsv")[0], region)
    assert mean == pytest.approx(moments(lightness(composite, "hsv")[0], ~region)[0], abs=1e-4)
    assert std < 1e-4


def test_options_are_checked() -> None:
    generated, composite, mask = scene()
    with pytest.raises(ValueError, match="space"):
        transfer_lightness(generated, composite, mask, space="lab")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="match"):
        ColorTransfer(match="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mask"):
        transfer_lightness(generated, composite, mask[:, :, :-1])
    assert make_color_transfer("none") is None
    assert make_color_transfer("hsl", "mean") == ColorTransfer("hsl", "mean")
    torch.testing.assert_close(
        ColorTransfer("hsl", "mean")(generated, composite, mask),
        transfer_lightness(generated, composite, mask, "hsl", "mean"),
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_agrees_with_cpu() -> None:
    generated, composite, mask = scene(height=257, width=311)
    expected = transfer_lightness(generated, composite, mask)
    output = transfer_lightness(generated.cuda().bfloat16(), composite.cuda(), mask.cuda())
    assert output.device.type == "cuda"
    torch.testing.assert_close(output.cpu(), expected, atol=1e-2, rtol=0)


# --- as every method's output post-process -------------------------------------------------------------
def write_inputs(tmp_path: Path, height: int = 90, width: int = 120) -> tuple[Path, Path]:
    """A made-up composite: smooth background, a darker textured foreground, a soft-edged mask."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([90 + yy, 120 + xx // 2, 160 - yy // 2], axis=-1).astype(np.float64)
    image += rng.normal(0, 12, image.shape)
    inside = (yy > 20) & (yy < 70) & (xx > 30) & (xx < 90)
    image[inside] = image[inside] * np.array([0.5, 0.4, 0.7]) + rng.normal(0, 20, (inside.sum(), 3))
    mask = np.clip(np.minimum.reduce([yy - 20, 70 - yy, xx - 30, 90 - xx]) / 3 + 0.5, 0, 1)
    composite_path, mask_path = tmp_path / "c.png", tmp_path / "m.png"
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(composite_path)
    Image.fromarray((mask * 255).round().astype(np.uint8)).save(mask_path)
    return composite_path, mask_path


def apply_directly(output: np.ndarray, composite: np.ndarray, mask: np.ndarray, space: str) -> np.ndarray:
    def tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255

    result = transfer_lightness(tensor(output), tensor(composite), torch.from_numpy(mask)[None, None], space)
    return to_uint8(result[0]).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("space", ["hsv", "hsl"])
def test_harmonize_cli_composite_with_color_transfer(space: str, tmp_path: Path) -> None:
    composite_path, mask_path = write_inputs(tmp_path)
    output_path = tmp_path / "out.png"
    arguments = ["--method", "Composite", "--composite", str(composite_path), "--mask", str(mask_path)]
    assert harmonize_main([*arguments, "--output", str(output_path), "--color-transfer", space]) == 0
    output, composite, mask = read_rgb(output_path), read_rgb(composite_path), read_mask(mask_path)
    background = mask == 0
    np.testing.assert_array_equal(output[background], composite[background])
    assert (output[mask >= 0.5] != composite[mask >= 0.5]).mean() > 0.5
    np.testing.assert_array_equal(output, apply_directly(composite, composite, mask, space))


def test_harmonize_cli_applies_it_after_any_method(tmp_path: Path) -> None:
    composite_path, mask_path = write_inputs(tmp_path)
    composite, mask = read_rgb(composite_path), read_mask(mask_path)
    arguments = [
        "--method",
        "ReinhardLabTransfer",
        "--composite",
        str(composite_path),
        "--mask",
        str(mask_path),
    ]
    assert harmonize_main([*arguments, "--output", str(tmp_path / "plain.png"), "--device", "cpu"]) == 0
    assert harmonize_main([*arguments, "--output", str(tmp_path / "ct.png"), "--color-transfer", "hsv"]) == 0
    plain = read_rgb(tmp_path / "plain.png")
    np.testing.assert_array_equal(plain, ReinhardLabTransfer().harmonize_image(composite, mask))
    np.testing.assert_array_equal(
        read_rgb(tmp_path / "ct.png"), apply_directly(plain, composite, mask, "hsv")
    )
    with pytest.raises(HarmonyInputError, match="--color-transfer"):
        harmonize_main(
            [
                *arguments,
                "--output",
                str(tmp_path / "x.png"),
                "--color-transfer",
                "hsv",
                "--export-lut",
                "x.cube",
            ]
        )


def test_harmony_test_and_predict_with_the_callback(iharmony4_root: Path, tmp_path: Path) -> None:
    config = str(REPO_ROOT / "tests" / "configs" / "baseline_iharmony4.yaml")
    common = [
        "--config",
        config,
        "--model",
        "harmony.methods.Composite",
        f"--data.init_args.root={iharmony4_root}",
    ]
    callback = [
        "--trainer.callbacks+=harmony.postprocess.ColorTransferCallback",
        "--trainer.callbacks.space=hsl",
    ]

    plain = make_cli(common, run=False)
    plain.trainer.test(plain.model, datamodule=plain.datamodule, verbose=False)
    with_transfer = make_cli([*common, *callback], run=False)
    (added,) = [c for c in with_transfer.trainer.callbacks if isinstance(c, ColorTransferCallback)]
    assert (added.space, added.match) == ("hsl", "mean_std")
    with_transfer.trainer.test(with_transfer.model, datamodule=with_transfer.datamodule, verbose=False)
    assert with_transfer.model.output_postprocess is None  # given back on teardown
    for group, metrics in plain.model.test_results.items():
        assert with_transfer.model.test_results[group]["n"] == metrics["n"]
    assert with_transfer.model.test_results["all"]["fmse"] != plain.model.test_results["all"]["fmse"]
    assert with_transfer.model.test_results["all"]["mse"] != plain.model.test_results["all"]["mse"]

    # The same syntax through the `harmony` command, and predict writes post-processed full-size files.
    assert main(["test", *common, *callback]) == 0
    predictions = tmp_path / "predictions"
    assert main(["predict", *common, *callback, f"--model.init_args.predictions_dir={predictions}"]) == 0
    for record in list_iharmony4(iharmony4_root, "test"):
        composite, mask = read_rgb(record.composite), read_mask(record.mask)
        expected = apply_directly(composite, composite, mask, "hsl")
        np.testing.assert_array_equal(read_rgb(predictions / f"{record.name}.png"), expected)


def test_predict_step_post_processes_full_resolution_outputs(tmp_path: Path) -> None:
    from harmony.data import types as keys

    composite_path, mask_path = write_inputs(tmp_path)
    model = Composite(predictions_dir=str(tmp_path / "predictions"))
    model.output_postprocess = ColorTransfer("hsv")
    batch = {
        keys.NAME: ["c"],
        keys.COMPOSITE: torch.rand(1, 3, 32, 32),
        keys.MASK: torch.ones(1, 1, 32, 32),
        keys.COMPOSITE_PATH: [str(composite_path)],
        keys.MASK_PATH: [str(mask_path)],
    }
    (written,) = model.predict_step(batch, 0)
    composite, mask = read_rgb(composite_path), read_mask(mask_path)
    np.testing.assert_array_equal(read_rgb(written), apply_directly(composite, composite, mask, "hsv"))
