from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from harmony.data import synthetic
from harmony.data.composites import COLOR_TRANSFERS
from harmony.data.io import read_mask, read_rgb
from harmony.data.synthetic import PHOTO_SPLITS, SPLITS, SUBSET, generate_synthetic_harmony
from harmony.errors import HarmonyInputError

SMALL = {"num_train": 8, "num_val": 4, "num_test": 5, "image_size": 64, "show_progress": False}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()
    }


def _lines(root: Path, split: str) -> list[str]:
    return (root / f"IHD_{split}.txt").read_text().splitlines()


def _triplet_paths(root: Path, line: str) -> tuple[Path, Path, Path]:
    composite = root / line
    mask_name = composite.stem.rsplit("_", 1)[0]
    real_name = mask_name.rsplit("_", 1)[0]
    return (
        composite,
        root / SUBSET / "masks" / f"{mask_name}.png",
        root / SUBSET / "real_images" / f"{real_name}.png",
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_harmony(tmp_path_factory.mktemp("synthetic") / "root", seed=3, **SMALL)


def test_same_seed_gives_byte_identical_files(tree: Path, tmp_path: Path) -> None:
    again = generate_synthetic_harmony(tmp_path / "again", seed=3, **SMALL)
    assert _files(again) == _files(tree)


def test_different_seed_gives_different_images(tree: Path, tmp_path: Path) -> None:
    other = _files(generate_synthetic_harmony(tmp_path / "other", seed=4, **SMALL))
    reference = _files(tree)
    assert other.keys() == reference.keys()
    images = [name for name in reference if name.endswith(".png")]
    assert sum(other[name] != reference[name] for name in images) > 0.9 * len(images)


def test_a_split_does_not_depend_on_the_size_of_the_others(tree: Path, tmp_path: Path) -> None:
    bigger = generate_synthetic_harmony(tmp_path / "bigger", seed=3, **{**SMALL, "num_train": 12})
    for line, other in zip(_lines(tree, "test"), _lines(bigger, "test"), strict=True):
        for small, big in zip(_triplet_paths(tree, line), _triplet_paths(bigger, other), strict=True):
            assert small.read_bytes() == big.read_bytes()


def test_list_files_have_the_requested_counts(tree: Path) -> None:
    lines = [line for split in SPLITS for line in _lines(tree, split)]
    assert [len(_lines(tree, split)) for split in SPLITS] == [
        SMALL["num_train"],
        SMALL["num_val"],
        SMALL["num_test"],
    ]
    assert len(set(lines)) == len(lines)
    on_disk = {
        f"{SUBSET}/composite_images/{path.name}" for path in (tree / SUBSET / "composite_images").iterdir()
    }
    assert on_disk == set(lines)


def test_layout_follows_the_iharmony4_name_rule(tree: Path) -> None:
    for split in SPLITS:
        for line in _lines(tree, split):
            assert line.startswith(f"{SUBSET}/composite_images/s") and line.endswith(".png")
            for path in _triplet_paths(tree, line):
                assert path.is_file(), path
    assert sorted(path.name for path in (tree / SUBSET / "composite_images").iterdir())[:2] == [
        "s0001_1_1.png",
        "s0001_1_2.png",
    ]


def test_background_is_bit_identical_and_foreground_changed(tree: Path) -> None:
    size = SMALL["image_size"]
    for split in SPLITS:
        for line in _lines(tree, split):
            composite_path, mask_path, real_path = _triplet_paths(tree, line)
            composite, real, mask = read_rgb(composite_path), read_rgb(real_path), read_mask(mask_path)
            assert composite.shape == real.shape == (size, size, 3)
            assert set(np.unique(mask)) <= {0.0, 1.0}
            foreground = mask == 1.0
            assert 0.004 <= foreground.mean() <= 0.65, line
            np.testing.assert_array_equal(composite[~foreground], real[~foreground])
            difference = composite[foreground].astype(np.float64) - real[foreground]
            assert np.mean(difference**2) > 10.0, line


def test_splits_are_disjoint_by_source_photo(tree: Path) -> None:
    manifest = json.loads((tree / "manifest.json").read_text())
    photos_by_split: dict[str, set[str]] = {split: set() for split in SPLITS}
    transfers_seen = 0
    for split in SPLITS:
        for line in _lines(tree, split):
            real = manifest["reals"][Path(line).stem.split("_")[0]]
            assert real["split"] == split
            photos_by_split[split].add(real["photo"])
            record = manifest["composites"][Path(line).stem]
            assert record["family"] == real["family"]
            if record["family"] == "color_transfer":
                transfers_seen += 1
                # The colour reference is another photo of the same split.
                assert record["reference_photo"] in set(PHOTO_SPLITS[split]) - {real["photo"]}
        assert photos_by_split[split] <= set(PHOTO_SPLITS[split])
    assert transfers_seen > 0
    assert not photos_by_split["train"] & photos_by_split["val"]
    assert not photos_by_split["train"] & photos_by_split["test"]
    assert not photos_by_split["val"] & photos_by_split["test"]


def test_photo_assignment_is_disjoint_and_loads_offline() -> None:
    everything = [photo for split in SPLITS for photo in PHOTO_SPLITS[split]]
    assert len(everything) == len(set(everything))
    assert len(PHOTO_SPLITS["val"]) >= 2 and len(PHOTO_SPLITS["test"]) >= 2
    for photo in everything:
        image = synthetic._photo(photo)
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8


def test_manifest_records_version_and_arguments(tree: Path) -> None:
    manifest = json.loads((tree / "manifest.json").read_text())
    assert manifest["version"] == synthetic.GENERATOR_VERSION
    assert manifest["args"] == {
        "seed": 3,
        **{key: value for key, value in SMALL.items() if key != "show_progress"},
    }


def test_cache_hit_rewrites_nothing(tree: Path) -> None:
    before = {path: path.stat().st_mtime_ns for path in tree.rglob("*")}
    assert generate_synthetic_harmony(tree, seed=3, **SMALL) == tree
    assert {path: path.stat().st_mtime_ns for path in tree.rglob("*")} == before
    assert not [path for path in tree.parent.iterdir() if path.name.startswith(".")]


def test_changed_arguments_regenerate_in_place(tree: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(tree, root)
    generate_synthetic_harmony(root, seed=5, **{**SMALL, "num_test": 2})
    assert json.loads((root / "manifest.json").read_text())["args"]["seed"] == 5
    assert len(_lines(root, "test")) == 2
    assert _files(root) == _files(
        generate_synthetic_harmony(tmp_path / "fresh", seed=5, **{**SMALL, "num_test": 2})
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["fresh", "root"]


def test_incomplete_tree_is_regenerated(tree: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(tree, root)
    missing = root / _lines(root, "val")[0]
    missing.unlink()
    generate_synthetic_harmony(root, seed=3, **SMALL)
    assert _files(root) == _files(tree)


def test_failed_generation_leaves_nothing_behind(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    shutil.copytree(tree, root)
    calls = []

    def failing_write(path: Path, image: np.ndarray) -> None:
        calls.append(path)
        if len(calls) > 5:
            raise OSError("disk full")

    monkeypatch.setattr(synthetic, "_write_png", failing_write)
    with pytest.raises(OSError, match="disk full"):
        generate_synthetic_harmony(root, seed=9, **SMALL)
    assert _files(root) == _files(tree)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["root"]


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    (root / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(HarmonyInputError, match="refusing"):
        generate_synthetic_harmony(root, **SMALL)
    assert [path.name for path in root.iterdir()] == ["holiday.jpg"]


@pytest.mark.parametrize(
    "overrides", [{"image_size": 16}, {"num_train": -1}, {"seed": -3}, {"num_val": 2.5}, {"image_size": True}]
)
def test_rejects_bad_arguments(tmp_path: Path, overrides: dict) -> None:
    with pytest.raises(HarmonyInputError):
        generate_synthetic_harmony(tmp_path / "root", **{**SMALL, **overrides})
    assert not (tmp_path / "root").exists()


@pytest.fixture(scope="module")
def larger_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_harmony(
        tmp_path_factory.mktemp("larger") / "root",
        seed=1,
        num_train=120,
        num_val=0,
        num_test=0,
        image_size=96,
        show_progress=False,
    )


def test_masks_are_single_solid_regions(larger_tree: Path) -> None:
    for path in sorted((larger_tree / SUBSET / "masks").iterdir()):
        mask = read_mask(path) >= 0.5
        _, components = ndimage.label(mask)
        assert components == 1, path.name
        np.testing.assert_array_equal(ndimage.binary_fill_holes(mask), mask, err_msg=path.name)


def test_every_family_is_drawn_and_strengths_stay_in_their_documented_ranges(larger_tree: Path) -> None:
    manifest = json.loads((larger_tree / "manifest.json").read_text())
    by_family: dict[str, list[float]] = {family: [] for family in synthetic.FAMILIES}
    methods = set()
    low, high = synthetic.FMSE_RANGE
    for name, record in manifest["composites"].items():
        by_family[record["family"]].append(record["fmse"])
        methods.add(record.get("method"))
        assert low <= record["target_fmse"] <= high, name
        # The change is scaled onto the target, never past it (rounding to 8 bits can overshoot slightly).
        assert record["fmse"] <= record["target_fmse"] * 1.02 + 1.0, name
    assert set(COLOR_TRANSFERS) <= methods
    for family, values in by_family.items():
        # Enough composites that the median lands within a factor 2.5 of the family's documented median.
        assert len(values) >= 20, family
        median = float(np.median(values))
        expected = synthetic.STRENGTH_MEDIANS[family]
        assert expected / 2.5 <= median <= expected * 2.5, (family, median)
        assert np.mean(np.array(values) >= low) >= 0.9, family


def test_retouched_and_relit_reals_are_a_rendition_of_the_photo(larger_tree: Path) -> None:
    manifest = json.loads((larger_tree / "manifest.json").read_text())
    families = {record["family"] for record in manifest["reals"].values()}
    assert families == set(synthetic.FAMILIES)
    # Relit reals span night and day: their mean brightness varies far more than colour-transfer reals'.
    brightness = {family: [] for family in synthetic.FAMILIES}
    for name, record in manifest["reals"].items():
        real = read_rgb(larger_tree / SUBSET / "real_images" / f"{name}.png")
        brightness[record["family"]].append(real.mean())
    assert np.percentile(brightness["illumination"], 25) < 0.6 * np.percentile(
        brightness["color_transfer"], 25
    )
