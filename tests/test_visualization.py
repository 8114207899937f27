"""Labelled picture grids: the layout, the quickstart's grid.png, the TensorBoard grids of ``harmony fit``."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harmony.callbacks import ImageGridLogger
from harmony.cli import main
from harmony.commands.quickstart import picture_grid
from harmony.data import types as keys
from harmony.methods import HarmonizationModule
from harmony.methods.base import to_uint8
from harmony.metrics.functional import per_image_metrics
from harmony.visualization import band_height, default_font_size, foreground_mse, labelled_grid
from tests.conftest import REPO_ROOT

PARAMETRIC = str(REPO_ROOT / "tests" / "configs" / "semi_supervised_parametric_iharmony4.yaml")
INK = 100  # darker than this is label ink: the bands are white and the separators grey (160)


def random_images(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    # Bright noise (no pixel below 128), so label ink cannot be mistaken for an image pixel.
    rng = np.random.default_rng(seed)
    return list(rng.integers(128, 256, size=(count, height, width, 3), dtype=np.uint8))


def tile(
    grid: np.ndarray, row: int, column: int, size: tuple[int, int], band: int, labelled: bool
) -> np.ndarray:
    """The cell (row, column) of a :func:`labelled_grid` with separators of 2 pixels."""
    height, width = size
    top = band + row * (2 + (band if labelled else 0) + height) + 2 + (band if labelled else 0)
    left = column * (width + 2)
    return grid[top : top + height, left : left + width]


def test_labelled_grid_has_its_size_label_ink_and_the_images_pixel_for_pixel() -> None:
    height, width, font_size = 40, 48, 12
    band = band_height(font_size)
    rows = [random_images(3, height, width, seed) for seed in range(2)]
    grid = labelled_grid(rows, ("composite", "", "real"), ["first row", "second"], font_size=font_size)

    assert grid.dtype == np.uint8 and grid.shape == (band + 2 * (2 + band + height), 3 * width + 2 * 2, 3)
    for row, images in enumerate(rows):
        for column, image in enumerate(images):
            np.testing.assert_array_equal(
                tile(grid, row, column, (height, width), band, labelled=True), image
            )
    # Ink exactly under the labelled columns of the header (the middle one has an empty label).
    header = grid[:band].min(axis=2)
    inked = [(header[:, c * (width + 2) : c * (width + 2) + width] < INK).sum() for c in range(3)]
    assert inked[0] > 20 and inked[1] == 0 and inked[2] > 10
    # Each row's band is labelled from its left edge, and the longer label inks more.
    row_bands = [grid[band + 2 + r * (2 + band + height) :][:band].min(axis=2) for r in range(2)]
    assert all((b[:, :10] < INK).any() for b in row_bands)
    assert (row_bands[0] < INK).sum() > (row_bands[1] < INK).sum() > 0
    # The separators are grey lines.
    np.testing.assert_array_equal(grid[band : band + 2], 160)
    first_tiles = 2 * band + 2
    np.testing.assert_array_equal(grid[first_tiles : first_tiles + height, width : width + 2], 160)


def test_labelled_grid_without_row_labels_and_its_errors() -> None:
    images = random_images(2, 20, 30)
    grid = labelled_grid([images], ("composite", "harmonized"))
    band = band_height(default_font_size(30))
    assert grid.shape == (band + 2 + 20, 2 * 30 + 2, 3)
    np.testing.assert_array_equal(tile(grid, 0, 1, (20, 30), band, labelled=False), images[1])
    # Labels wider than their 30-pixel column are drawn smaller, inside it.
    assert (grid[:band, 30:32] >= INK).all()
    with pytest.raises(ValueError, match="2 images for 3 columns"):
        labelled_grid([images])
    with pytest.raises(ValueError, match="uint8"):
        labelled_grid([[images[0], images[1][:10]]], ("composite", "harmonized"))
    with pytest.raises(ValueError, match="1 row labels for 2 rows"):
        labelled_grid([images, images], ("composite", "harmonized"), ["one"])


def test_foreground_mse_is_the_evaluators() -> None:
    composite, target = (np.stack(random_images(2, 16, 16, seed)) for seed in (1, 2))
    mask = np.zeros((2, 16, 16), dtype=np.float32)
    mask[:, 4:12, 2:9] = 1
    scored = per_image_metrics(
        *(torch.from_numpy(a).permute(0, 3, 1, 2) for a in (composite, target)),
        torch.from_numpy(mask)[:, None],
        torch.from_numpy(target).permute(0, 3, 1, 2),
    )["fmse"]
    for index in range(2):
        assert foreground_mse(composite[index], target[index], mask[index]) == pytest.approx(
            float(scored[index]), rel=1e-12
        )
    assert math.isnan(foreground_mse(composite[0], target[0], np.zeros((16, 16))))


class Halving(HarmonizationModule):
    """A model without weights: the composite at half brightness."""

    def harmonize(self, batch: dict) -> torch.Tensor:
        return batch[keys.COMPOSITE] * 0.5


def test_picture_grid_is_labelled_with_one_row_per_sample_and_the_fmse() -> None:
    generator = torch.Generator().manual_seed(0)
    composite, target = (
        torch.rand(8, 3, 32, 32, generator=generator),
        torch.rand(8, 3, 32, 32, generator=generator),
    )
    mask = torch.zeros(8, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    batch = {
        keys.COMPOSITE: composite,
        keys.TARGET: target,
        keys.MASK: mask,
        keys.NAME: [f"s{i}" for i in range(8)],
    }
    grid = picture_grid(Halving(), batch)
    band = band_height(default_font_size(32))
    assert grid.shape == (band + 6 * (2 + band + 32), 3 * 32 + 2 * 2, 3)  # the first 6 samples
    for row in range(6):
        expected = [
            to_uint8(image[row]).permute(1, 2, 0).numpy() for image in (composite, composite * 0.5, target)
        ]
        for column, image in enumerate(expected):
            np.testing.assert_array_equal(tile(grid, row, column, (32, 32), band, labelled=True), image)
        label = grid[band + 2 + row * (2 + band + 32) :][:band]
        assert (label.min(axis=2) < INK).sum() > 30  # "s<i>  fMSE <a> -> <b>"
    assert (grid[:band].min(axis=2) < INK).sum() > 30


def read_images(log_dir: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = log_dir.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    return {tag: accumulator.Images(tag) for tag in accumulator.Tags()["images"]}


def test_fit_logs_a_labelled_grid_per_validation_epoch_to_tensorboard(
    iharmony4_root: Path, tmp_path: Path
) -> None:
    # Two validation batches of 2: the default 4 samples are collected across batches.
    arguments = [
        "fit",
        "--config",
        PARAMETRIC,
        f"--data.init_args.root={iharmony4_root}",
        "--trainer.logger=true",
    ]
    arguments += [
        "--data.init_args.batch_size=2",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=1",
    ]
    arguments += ["--trainer.limit_val_batches=2", "--trainer.num_sanity_val_steps=1"]
    assert main([*arguments, f"--trainer.default_root_dir={tmp_path}"]) == 0

    images = read_images(tmp_path / "lightning_logs" / "semi_supervised_parametric_iharmony4")
    assert set(images) == {ImageGridLogger.TAG}
    # One grid per epoch, none for the sanity check, at the step each epoch ended.
    assert [event.step for event in images[ImageGridLogger.TAG]] == [1, 2]
    last = images[ImageGridLogger.TAG][-1]
    grid = np.asarray(Image.open(io.BytesIO(last.encoded_image_string)).convert("RGB"))
    band = band_height(default_font_size(32))
    assert grid.shape == (band + 4 * (2 + band + 32), 3 * 32 + 2 * 2, 3)
    assert (grid[:band].min(axis=2) < INK).any()


def test_the_cli_adds_one_image_grid_logger_unless_the_config_has_its_own(iharmony4_root: Path) -> None:
    from harmony.lightning_cli import make_cli

    common = ["--config", PARAMETRIC, f"--data.init_args.root={iharmony4_root}"]
    (default,) = [c for c in make_cli(common, run=False).trainer.callbacks if isinstance(c, ImageGridLogger)]
    assert default.num_images == 4
    own = ["--trainer.callbacks+=harmony.callbacks.ImageGridLogger", "--trainer.callbacks.num_images=0"]
    trainer = make_cli([*common, *own], run=False).trainer
    (off,) = [c for c in trainer.callbacks if isinstance(c, ImageGridLogger)]
    assert off.num_images == 0


def test_the_callback_logs_only_to_tensorboard_and_takes_part_of_a_batch(
    iharmony4_root: Path, tmp_path: Path
) -> None:
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from harmony.data import IHarmony4DataModule

    data = IHarmony4DataModule(root=iharmony4_root, image_size=32, batch_size=2, val_fraction=0.3)
    common = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False}
    csv = Trainer(logger=CSVLogger(tmp_path / "csv"), callbacks=[ImageGridLogger(3)], **common)
    csv.validate(Halving(), datamodule=data, verbose=False)  # another logger: nothing to do, no error

    logger = TensorBoardLogger(tmp_path, name="tb", version="v")
    Trainer(logger=logger, callbacks=[ImageGridLogger(3)], **common).validate(Halving(), datamodule=data)
    logger.experiment.flush()
    (grid,) = read_images(tmp_path / "tb" / "v")[ImageGridLogger.TAG]
    band = band_height(default_font_size(32))
    assert (grid.height, grid.width) == (
        band + 3 * (2 + band + 32),
        3 * 32 + 2 * 2,
    )  # 2 + 1 of the next batch
