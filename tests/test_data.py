from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harmony.cli import main
from harmony.data import (
    DualStreamDataModule,
    FolderDataModule,
    HarmonyDataModule,
    IHarmony4DataModule,
    RealHMDataModule,
    RetouchPairsDataModule,
    SyntheticHarmonyDataModule,
    TripletFoldersDataModule,
)
from harmony.data import types as keys
from harmony.data.records import holdout, iharmony4_record, list_iharmony4
from harmony.data.transforms import PairedTrainTransform
from harmony.errors import HarmonyInputError


def test_name_rule_splits_from_the_right() -> None:
    record = iharmony4_record(Path("/r"), "Hday2night/composite_images/d1048-20120628-200951_1_3.jpg")
    assert record.mask == Path("/r/Hday2night/masks/d1048-20120628-200951_1.png")
    assert record.target == Path("/r/Hday2night/real_images/d1048-20120628-200951.jpg")
    assert (record.name, record.subset) == ("d1048-20120628-200951_1_3", "Hday2night")
    rp = iharmony4_record(Path("/r"), "R-DUTS/composite_images/rd_ILSVRC_0001_1_2.jpg")
    assert rp.mask.name == "rd_ILSVRC_0001_1.png" and rp.target.name == "rd_ILSVRC_0001.jpg"


def test_list_iharmony4_reads_official_and_per_subset_lists(iharmony4_root: Path, tmp_path: Path) -> None:
    test = list_iharmony4(iharmony4_root, "test")
    assert len(test) == 8 and {r.subset for r in test} == {"HCOCO", "HAdobe5k", "HFlickr", "Hday2night"}
    assert all(r.composite.is_file() and r.mask.is_file() and r.target.is_file() for r in test)
    # Per-subset lists of bare names (R2R's layout) give the same records.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(iharmony4_root, copy)
    (copy / "IHD_test.txt").unlink()
    for subset in ("HCOCO", "HAdobe5k", "HFlickr", "Hday2night"):
        names = [r.composite.name for r in test if r.subset == subset]
        (copy / subset / f"{subset}_test.txt").write_text("\n".join(names) + "\n")
    assert sorted(r.name for r in list_iharmony4(copy, "test")) == sorted(r.name for r in test)
    with pytest.raises(HarmonyInputError, match="no list file for split 'val'"):
        list_iharmony4(copy, "val")


def test_holdout_is_disjoint_by_photo(iharmony4_root: Path) -> None:
    train = list_iharmony4(iharmony4_root, "train")
    held, kept = holdout(train, 0.3, True), holdout(train, 0.3, False)
    assert len(held) + len(kept) == len(train)
    assert not {r.target for r in held} & {r.target for r in kept}


def test_paired_transform_moves_image_mask_and_target_together() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    mask = np.zeros((64, 80), np.float32)
    mask[20:40, 30:60] = 1
    target = image.copy()
    transform = PairedTrainTransform(32)
    for _ in range(5):
        out_image, out_mask, out_target = transform(image, mask, target)
        assert out_image.shape == (32, 32, 3) and out_mask.shape == (32, 32)
        np.testing.assert_array_equal(out_image, out_target)
        assert (out_mask >= 0.5).mean() >= 0.01


def test_paired_transform_falls_back_to_resize_when_foreground_is_tiny() -> None:
    image = np.zeros((200, 200, 3), np.uint8)
    mask = np.zeros((200, 200), np.float32)
    mask[0:4, 0:4] = 1  # 0.04 % of the image: no crop can reach 1 %
    _, out_mask, _ = PairedTrainTransform(50, min_foreground=0.5)(image, mask, None)
    assert out_mask.shape == (50, 50)


def test_scene_color_jitter_changes_composite_and_real_alike() -> None:
    rng = np.random.default_rng(1)
    real = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    mask = np.zeros((48, 48), np.float32)
    mask[10:30, 12:36] = 1
    composite = real.copy()
    composite[mask > 0] = (composite[mask > 0] * 0.6).astype(np.uint8)
    transform = PairedTrainTransform(48, scale=(1.0, 1.0), ratio=(1.0, 1.0), scene_color_jitter=1.0, seed=0)
    changed = 0
    for _ in range(6):
        out_composite, out_mask, out_real = transform(composite, mask, real)
        background = out_mask < 0.5
        # The pair stays a harmonization example: identical backgrounds, a foreground still to fix.
        np.testing.assert_array_equal(out_composite[background], out_real[background])
        assert not np.array_equal(out_composite[~background], out_real[~background])
        changed += not np.array_equal(np.sort(out_real.ravel()), np.sort(real.ravel()))
    assert changed >= 5
    with pytest.raises(ValueError, match="scene_color_jitter"):
        PairedTrainTransform(32, scene_color_jitter=1.5)


def test_seeded_transform_repeats_its_augmentations() -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 16:48] = 1

    def draws(seed: int) -> list[np.ndarray]:
        transform = PairedTrainTransform(32, scene_color_jitter=0.5, seed=seed)
        return [transform(image, mask, image.copy())[0] for _ in range(4)]

    first, again, other = draws(7), draws(7), draws(8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_seeded_run_loads_the_same_augmented_batches_with_workers(iharmony4_root: Path) -> None:
    from lightning.pytorch import seed_everything

    def first_batch() -> torch.Tensor:
        seed_everything(3, workers=True, verbose=False)
        dm = IHarmony4DataModule(
            iharmony4_root, image_size=24, batch_size=4, num_workers=1, scene_color_jitter=0.5
        )
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))[keys.COMPOSITE]

    torch.testing.assert_close(first_batch(), first_batch(), rtol=0, atol=0)


def test_datamodule_batches_follow_the_shared_format(iharmony4_root: Path) -> None:
    dm = IHarmony4DataModule(iharmony4_root, image_size=32, batch_size=4, eval_size=24, val_fraction=0.3)
    dm.setup("fit")
    dm.setup("test")
    batch = next(iter(dm.train_dataloader()))
    assert batch[keys.COMPOSITE].shape == (4, 3, 32, 32) and batch[keys.TARGET].dtype == torch.float32
    larger = IHarmony4DataModule(iharmony4_root, image_size=32, batch_size=4, eval_image_size=40)
    larger.setup("test")
    assert next(iter(larger.test_dataloader()))[keys.COMPOSITE].shape[-2:] == (40, 40)
    assert set(batch[keys.MASK].unique().tolist()) <= {0.0, 1.0}
    test = next(iter(dm.test_dataloader()))
    assert test[keys.EVAL_TARGET].dtype == torch.uint8 and test[keys.EVAL_TARGET].shape[-1] == 24
    assert test[keys.ORIGINAL_SIZE][0].tolist() == [40, 48]
    # Without augmentation the working images are the PIL-bilinear resize of the files.
    record = dm.datasets["test"].records[0]
    expected = np.asarray(Image.open(record.composite).convert("RGB").resize((32, 32), Image.BILINEAR))
    got = (test[keys.COMPOSITE][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(got, expected)


def test_mask_size_mismatch_is_an_error_naming_both_files(iharmony4_root: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bad"
    shutil.copytree(iharmony4_root, copy)
    record = list_iharmony4(copy, "test")[0]
    Image.new("L", (10, 10), 255).save(record.mask)
    dm = IHarmony4DataModule(copy, image_size=16, batch_size=1)
    dm.setup("test")
    with pytest.raises(
        HarmonyInputError, match=rf"{record.mask.name}: mask is 10x10 but image .*{record.composite.name}"
    ):
        next(iter(dm.test_dataloader()))


def test_folder_datamodules(tmp_path: Path) -> None:
    for folder in ("composite", "mask", "target"):
        (tmp_path / folder).mkdir()
    for stem in ("x", "y"):
        Image.new("RGB", (20, 10), (200, 10, 10)).save(tmp_path / "composite" / f"{stem}.jpg")
        Image.new("L", (20, 10), 255).save(tmp_path / "mask" / f"{stem}_mask.png")
        Image.new("RGB", (20, 10), (10, 200, 10)).save(tmp_path / "target" / f"{stem}.png")
    folders = TripletFoldersDataModule(
        tmp_path, "composite", "mask", "target", mask_suffix="_mask", image_size=8
    )
    folders.setup("test")
    assert len(folders.datasets["test"]) == 2
    predict = FolderDataModule(tmp_path / "composite", tmp_path / "mask", mask_suffix="_mask", image_size=8)
    predict.setup("predict")
    sample = predict.datasets["predict"][0]
    assert keys.TARGET not in sample and sample[keys.COMPOSITE].shape == (3, 8, 8)
    with pytest.raises(HarmonyInputError, match="no mask named x"):
        FolderDataModule(tmp_path / "composite", tmp_path / "mask").list_records("predict")


def test_iharmony4_layout_modules_default_to_their_own_root_and_subsets(tmp_path: Path) -> None:
    from harmony.data import HumanHarmonyDataModule, RPHarmonyDataModule

    assert IHarmony4DataModule().root == Path("data/iHarmony4")
    rp = RPHarmonyDataModule(scene_color_jitter=0.5)
    assert rp.root == Path("data/RPHarmony") and rp.subsets == ["R-ADE20K", "R-DUTS"]
    assert rp.scene_color_jitter == 0.5
    human = HumanHarmonyDataModule(root=tmp_path)
    assert human.root == tmp_path and human.subsets == ["HumanHarmony"]


SHARED_OPTIONS = list(inspect.signature(HarmonyDataModule.__init__).parameters)[1:]


def data_help(capsys: pytest.CaptureFixture[str], datamodule: str) -> set[str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--data.help", datamodule])
    assert exit_info.value.code in (0, None)
    return set(re.findall(r"--data\.(\w+)", capsys.readouterr().out))


def test_subclasses_hand_the_shared_options_on_by_keyword(iharmony4_root: Path, tmp_path: Path) -> None:
    dm = IHarmony4DataModule(root=iharmony4_root, batch_size=3)
    assert dm.batch_size == 3 and dm.image_size == 256 and dm.augment
    assert list(dm.shared_options()) == SHARED_OPTIONS
    assert dm.shared_options()["batch_size"] == 3
    synthetic = SyntheticHarmonyDataModule(root=tmp_path / "synthetic", batch_size=3, min_foreground=0.2)
    assert (synthetic.batch_size, synthetic.min_foreground, synthetic.subsets) == (3, 0.2, ["HSynthetic"])
    assert RetouchPairsDataModule(tmp_path, val_fraction=0.3).image_size == 512
    with pytest.raises(TypeError):
        RealHMDataModule(augment=True)


def test_dual_stream_takes_every_shared_option_of_its_supervised_data(iharmony4_root: Path) -> None:
    supervised = IHarmony4DataModule(iharmony4_root, image_size=32, batch_size=3, scene_color_jitter=0.5)
    dual = DualStreamDataModule(supervised, real_composites=iharmony4_root)
    assert dual.shared_options() == supervised.shared_options()


@pytest.mark.parametrize(
    "datamodule",
    ["IHarmony4DataModule", "RPHarmonyDataModule", "TripletFoldersDataModule", "RetouchPairsDataModule"],
)
def test_help_lists_the_shared_options(datamodule: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert set(SHARED_OPTIONS) <= data_help(capsys, datamodule)


def test_restricted_datamodules_offer_only_the_options_they_use(capsys: pytest.CaptureFixture[str]) -> None:
    shown = data_help(capsys, "RealHMDataModule") & set(SHARED_OPTIONS)
    assert shown == {"image_size", "batch_size", "num_workers", "eval_size"}
    assert data_help(capsys, "FolderDataModule") & set(SHARED_OPTIONS) == {
        "image_size",
        "batch_size",
        "num_workers",
    }
    assert FolderDataModule("composites", "masks").batch_size == 1
    synthetic = data_help(capsys, "SyntheticHarmonyDataModule")
    assert set(SHARED_OPTIONS) <= synthetic and not {"subsets", "val_fraction"} & synthetic


def test_cli_refuses_an_option_a_datamodule_fixes(capsys: pytest.CaptureFixture[str]) -> None:
    common = ["fit", "--model=Composite", "--data=RealHMDataModule", "--data.init_args.batch_size=3"]
    with pytest.raises(SystemExit) as exit_info:
        main([*common, "--print_config"])
    assert exit_info.value.code in (0, None) and "batch_size: 3" in capsys.readouterr().out
    assert main([*common, "--data.init_args.augment=false", "--print_config"]) == 2
    error = capsys.readouterr().err.strip()
    assert "'augment' is not accepted" in error and error.count("\n") == 0
