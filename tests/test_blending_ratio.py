"""DiffHarmony++'s blending ratio: generated composites added to the iHarmony4-layout training split."""

from __future__ import annotations

import random
import re
import shutil
import warnings
from collections import Counter
from pathlib import Path

import pytest

from harmony.data import IHarmony4DataModule
from harmony.data import types as keys
from harmony.data.blending import blend_generated, candidates_per_pair, pair_key
from harmony.data.records import TripletRecord, list_iharmony4
from harmony.errors import HarmonyInputError
from tests.fixtures.trees import make_iharmony4_tree

# N1 = 3 pairs, N2 = 5 composites.
ORIGINAL_PAIRS = {("HCOCO", "c0001_1"): 2, ("HCOCO", "c0002_1"): 2, ("HAdobe5k", "a0001_1"): 1}


def record(subset: str, mask_stem: str, k: int, root: str = "data") -> TripletRecord:
    """A record of composite ``<mask_stem>_<k>`` (only paths: selection reads no pixels)."""
    folder = Path(root) / subset
    return TripletRecord(
        composite=folder / "composite_images" / f"{mask_stem}_{k}.png",
        mask=folder / "masks" / f"{mask_stem}.png",
        target=folder / "real_images" / f"{mask_stem.rsplit('_', 1)[0]}.jpg",
        name=f"{mask_stem}_{k}",
        subset=subset,
    )


def original_records() -> list[TripletRecord]:
    return [record(*key, k) for key, count in ORIGINAL_PAIRS.items() for k in range(1, count + 1)]


def generated_records(per_pair: int, extra_pairs: bool = True) -> list[TripletRecord]:
    """``per_pair`` candidates for each original pair, plus candidates of pairs the original lacks."""
    pairs = list(ORIGINAL_PAIRS)
    if extra_pairs:
        # A held-out photo, and the same mask stem in another subset: neither may be picked.
        pairs += [("HCOCO", "c0009_1"), ("HAdobe5k", "c0001_1")]
    return [record(*key, k, root="generated") for key in pairs for k in range(per_pair)]


@pytest.mark.parametrize(("ratio", "per_pair"), [(1.0, 2), (0.5, 1), (2.0, 4), (0.0, 0)])
def test_each_pair_gets_ceil_ratio_n2_over_n1_of_its_own_candidates(ratio: float, per_pair: int) -> None:
    original = original_records()
    blended = blend_generated(original, generated_records(per_pair=5), ratio, seed=0)
    assert blended[: len(original)] == original
    added = blended[len(original) :]
    assert len(added) == 3 * per_pair
    assert len(set(added)) == len(added)
    assert all(r.composite.parts[0] == "generated" for r in added)
    if per_pair:
        assert Counter(pair_key(r) for r in added) == dict.fromkeys(ORIGINAL_PAIRS, per_pair)


def test_candidates_per_pair_ignores_float_noise() -> None:
    assert candidates_per_pair(1.0, 3, 5) == 2
    # 2.2 * 25 is 55.00000000000001 in floating point.
    assert candidates_per_pair(2.2, 1, 25) == 55


def test_selection_is_seeded_and_independent_of_list_order() -> None:
    original, generated = original_records(), generated_records(per_pair=10)
    first = blend_generated(original, generated, 1.0, seed=3)
    shuffled = generated.copy()
    random.Random(0).shuffle(shuffled)
    assert blend_generated(original, shuffled, 1.0, seed=3) == first
    assert blend_generated(original, generated, 1.0, seed=4) != first


def test_short_pairs_get_all_they_have_and_one_warning() -> None:
    original = original_records()
    # HCOCO c0001_1 has one candidate (needs 2), HAdobe5k a0001_1 has none.
    generated = [record("HCOCO", "c0001_1", 0, "generated")]
    generated += [record("HCOCO", "c0002_1", k, "generated") for k in range(3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        blended = blend_generated(original, generated, 1.0, seed=0, source="gen")
    assert len(caught) == 1
    assert "2 of 3" in str(caught[0].message) and "1 of them have none" in str(caught[0].message)
    assert "gen" in str(caught[0].message)
    assert Counter(pair_key(r) for r in blended[len(original) :]) == {
        ("HCOCO", "c0001_1"): 1,
        ("HCOCO", "c0002_1"): 2,
    }


@pytest.mark.parametrize("ratio", [-0.5, float("nan"), float("inf")])
def test_bad_ratio_is_an_input_error_naming_the_option(ratio: float, tmp_path: Path) -> None:
    with pytest.raises(HarmonyInputError, match="blending_ratio"):
        blend_generated(original_records(), generated_records(per_pair=2), ratio, seed=0)
    with pytest.raises(HarmonyInputError, match="blending_ratio"):
        IHarmony4DataModule(tmp_path, generated_root=tmp_path, blending_ratio=ratio)
    with pytest.raises(HarmonyInputError, match="blending_seed"):
        IHarmony4DataModule(tmp_path, generated_root=tmp_path, blending_seed=-1)


def test_no_matching_candidate_is_an_input_error_naming_the_source() -> None:
    unrelated = [record("HFlickr", "f0001_1", k, "generated") for k in range(3)]
    with pytest.raises(HarmonyInputError, match="^gen: no generated composite matches"):
        blend_generated(original_records(), unrelated, 1.0, seed=0, source="gen")


def make_generated_tree(original_root: Path, root: Path, per_pair: int) -> Path:
    """A ``harmony generate-composites`` tree: each training pair copied, with ``per_pair`` candidates."""
    lines = []
    for original in list_iharmony4(original_root, "train"):
        subset = root / original.subset
        for folder in ("composite_images", "masks", "real_images"):
            (subset / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(original.mask, subset / "masks" / original.mask.name)
        shutil.copy(original.target, subset / "real_images" / original.target.name)
        for k in range(per_pair):
            name = f"{original.mask.stem}_{k}.png"
            shutil.copy(original.composite, subset / "composite_images" / name)
            lines.append(f"{original.subset}/composite_images/{name}")
    (root / "IHD_train.txt").write_text("\n".join(lines) + "\n")
    return root


def test_datamodule_blends_generated_composites_into_training_only(tmp_path: Path) -> None:
    original_root = make_iharmony4_tree(tmp_path / "original")
    generated_root = make_generated_tree(original_root, tmp_path / "generated", per_pair=3)
    options = {"image_size": 16, "batch_size": 2, "val_fraction": 0.3}
    plain = IHarmony4DataModule(original_root, **options)
    blended = IHarmony4DataModule(original_root, generated_root=generated_root, blending_ratio=2.0, **options)
    for dm in (plain, blended):
        dm.setup("fit")
        dm.setup("test")
    train, val = plain.datasets["train"].records, plain.datasets["val"].records
    assert val, "the hold-out must hold out a photo for this test to mean something"
    # One composite per pair in the tree, so γ = 2 gives each training pair 2 candidates.
    assert len(blended.datasets["train"]) == len(train) + 2 * len(train)
    added = blended.datasets["train"].records[len(train) :]
    assert {pair_key(r) for r in added} == {pair_key(r) for r in train}
    assert not {pair_key(r) for r in added} & {pair_key(r) for r in val}
    assert blended.datasets["val"].records == val
    assert blended.datasets["test"].records == plain.datasets["test"].records
    sample = blended.datasets["train"][len(train)]
    assert sample[keys.MASK_PATH].startswith(str(generated_root))
    assert sample[keys.COMPOSITE].shape == (3, 16, 16)


def test_datamodule_refuses_a_generated_root_without_a_training_list(tmp_path: Path) -> None:
    original_root = make_iharmony4_tree(tmp_path / "original")
    (tmp_path / "empty").mkdir()
    dm = IHarmony4DataModule(original_root, generated_root=tmp_path / "empty", image_size=16)
    with pytest.raises(HarmonyInputError, match=re.escape(str(tmp_path / "empty"))):
        dm.setup("fit")
