from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

import harmony.commands.build_rpharmony as build_module
from harmony.cli import main
from harmony.commands.build_rpharmony import AestheticFilter, ForegroundChangeFilter, load_filter
from harmony.data import RPHarmonyDataModule
from harmony.data.composites import random_poisson_blending
from harmony.data.records import list_iharmony4
from harmony.errors import HarmonyInputError

PHOTOS = {"astronaut": data.astronaut, "chelsea": data.chelsea, "coffee": data.coffee, "rocket": data.rocket}


def photo(name: str, size: tuple[int, int]) -> np.ndarray:
    """A scikit-image photograph shrunk to ``size`` (width, height)."""
    return cv2.resize(PHOTOS[name](), size, interpolation=cv2.INTER_AREA)


def ellipse_mask(height: int, width: int, centre: tuple[int, int], axes: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, -1)
    return mask


@pytest.fixture
def sample() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = photo("astronaut", (64, 56))
    return image, ellipse_mask(56, 64, (30, 28), (14, 10)), photo("coffee", (90, 60))


def test_background_is_untouched_and_foreground_changes(sample: tuple) -> None:
    image, mask, reference = sample
    composite = random_poisson_blending(image, mask, reference, np.random.default_rng(0))
    assert composite.shape == image.shape and composite.dtype == np.uint8
    outside = mask < 128
    np.testing.assert_array_equal(composite[outside], image[outside])
    change = np.abs(composite[~outside].astype(int) - image[~outside]).mean()
    assert change > 3


def test_soft_masks_are_binarised_at_one_half(sample: tuple) -> None:
    image, mask, reference = sample
    soft = cv2.GaussianBlur(mask.astype(np.float32) / 255, (7, 7), 2)
    composite = random_poisson_blending(image, soft, reference, np.random.default_rng(0))
    np.testing.assert_array_equal(composite[soft < 0.5], image[soft < 0.5])
    as_bool = random_poisson_blending(image, soft >= 0.5, reference, np.random.default_rng(0))
    np.testing.assert_array_equal(composite, as_bool)


def test_seeded(sample: tuple) -> None:
    image, mask, reference = sample
    first = random_poisson_blending(image, mask, reference, np.random.default_rng(7))
    again = random_poisson_blending(image, mask, reference, np.random.default_rng(7))
    other = random_poisson_blending(image, mask, reference, np.random.default_rng(8))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_alpha_zero_is_identity_and_alpha_mixes(sample: tuple) -> None:
    image, mask, reference = sample
    np.testing.assert_array_equal(
        random_poisson_blending(image, mask, reference, np.random.default_rng(3), alpha=0.0), image
    )
    full = random_poisson_blending(image, mask, reference, np.random.default_rng(3), alpha=1.0)
    half = random_poisson_blending(image, mask, reference, np.random.default_rng(3), alpha=0.5)
    expected = (full.astype(np.float32) + image) / 2
    assert np.abs(half - expected).max() <= 1


def test_blended_foreground_is_cut_where_it_was_blended() -> None:
    # A constant foreground has no gradient, so its Poisson blend is the harmonic fill of the reference's
    # boundary values: on a linear ramp, the ramp itself, which shows where the blend was cut out.
    height, width = 40, 50
    image = photo("chelsea", (width, height))
    mask = np.zeros((height, width), bool)
    mask[10:22, 15:33] = True
    image[mask] = (120, 90, 60)
    ys, xs = np.mgrid[0:height, 0:90]
    reference = np.stack([20 + 2 * xs, 30 + 4 * ys, np.full_like(xs, 100)], axis=-1).astype(np.uint8)
    for seed in range(3):
        composite = random_poisson_blending(image, mask, reference, np.random.default_rng(seed), alpha=1.0)
        # The draws the function makes: top, then left, of the clone box (foreground box + 1-px ring).
        draws = np.random.default_rng(seed)
        top = int(draws.integers(0, height - (12 + 2) + 1)) + 1
        left = int(draws.integers(0, 90 - (18 + 2) + 1)) + 1
        error = composite[10:22, 15:33].astype(float) - reference[top : top + 12, left : left + 18]
        # OpenCV's solver bends the ramp by a few levels, symmetrically about the box's centre, so the
        # mean error is near 0 where the cut is right and about one slope (2 or 4 levels) a pixel off.
        assert np.abs(error.mean(axis=(0, 1))).max() < 1
        assert np.abs(error).max() <= 8


@pytest.mark.parametrize(
    "region",
    [(slice(0, 20), slice(0, 25)), (slice(30, 56), slice(40, 64)), (slice(0, 56), slice(0, 64))],
    ids=["top-left corner", "bottom-right corner", "whole image"],
)
def test_foreground_touching_the_border(sample: tuple, region: tuple[slice, slice]) -> None:
    image, _, reference = sample
    mask = np.zeros(image.shape[:2], bool)
    mask[region] = True
    # A reference smaller than the foreground is enlarged to fit.
    for ref in (reference, reference[:9, :7]):
        composite = random_poisson_blending(image, mask, ref, np.random.default_rng(1))
        np.testing.assert_array_equal(composite[~mask], image[~mask])
        assert not np.array_equal(composite[mask], image[mask])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mask": np.zeros((56, 64), np.uint8)}, "empty"),
        ({"mask": np.full((50, 64), 255, np.uint8)}, "differs from the image"),
        ({"mask": np.full((56, 64), 2.0, np.float32)}, "float mask"),
        ({"mask": np.ones((56, 64), np.int64)}, "bool, uint8"),
        ({"image": np.zeros((56, 64, 3), np.float32)}, "image must be"),
        ({"image": np.zeros((56, 64), np.uint8)}, "image must be"),
        ({"reference": np.zeros((0, 64, 3), np.uint8)}, "reference is empty"),
        ({"alpha": 1.5}, "alpha"),
    ],
)
def test_bad_inputs(sample: tuple, change: dict, message: str) -> None:
    image, mask, reference = sample
    arguments = {"image": image, "mask": mask, "reference": reference, "alpha": 0.75} | change
    with pytest.raises(HarmonyInputError, match=message):
        random_poisson_blending(rng=np.random.default_rng(0), **arguments)


def test_foreground_change_filter() -> None:
    real = np.full((8, 8, 3), 100, np.uint8)
    mask = np.zeros((8, 8), np.float32)
    mask[2:6, 2:6] = 1
    band = ForegroundChangeFilter(low=100, high=1000)
    shifted = real.copy()
    shifted[mask > 0] = 120  # fMSE 400: inside the band
    assert band.score(shifted, mask, real) == 0
    assert band.score(real, mask, real) == pytest.approx(-np.log(101))
    too_far = real.copy()
    too_far[mask > 0] = 200  # fMSE 10000
    assert band.score(too_far, mask, real) == pytest.approx(-np.log(10001 / 1001))
    clipped = shifted.copy()
    clipped[2:4, 2:6] = 255  # half the foreground clipped; fMSE 12212.5, above the band
    assert band.score(clipped, mask, real) < band.score(too_far, mask, real) - 2


def write_photo_folder(root: Path, count: int = 6, mask_suffix: str = "") -> tuple[Path, Path]:
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    names = list(PHOTOS)
    rng = np.random.default_rng(0)
    for index in range(count):
        width, height = int(rng.integers(40, 72)), int(rng.integers(36, 60))
        image = photo(names[index % len(names)], (width, height))
        if index >= len(names):
            image = np.ascontiguousarray(image[:, ::-1])
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        mask = ellipse_mask(height, width, centre, (width // 4, height // 4))
        suffix = ".png" if index % 2 else ".jpg"
        Image.fromarray(image).save(images / f"photo_{index}{suffix}")
        Image.fromarray(mask).save(masks / f"photo_{index}{mask_suffix}.png")
    return images, masks


def build_args(images: Path, masks: Path, output: Path, *extra: str) -> list[str]:
    return [
        "build-rpharmony",
        "--images",
        str(images),
        "--masks",
        str(masks),
        "--output",
        str(output),
        "--candidates",
        "3",
        "--test-fraction",
        "0.34",
        "--no-progress",
        *extra,
    ]


def tree_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_build_gives_a_tree_check_data_and_the_datamodule_accept(tmp_path: Path) -> None:
    images, masks = write_photo_folder(tmp_path, mask_suffix="_mask")
    output = tmp_path / "RPHarmony"
    assert main(build_args(images, masks, output, "--mask-suffix", "_mask", "--keep", "2")) == 0
    assert main(["check-data", "--root", str(output), "--dataset", "rpharmony"]) == 0
    files = tree_files(output)
    assert "R-DUTS/real_images/photo_0.jpg" in files and "R-DUTS/masks/photo_0_1.png" in files
    assert {"R-DUTS/composite_images/photo_0_1_1.jpg", "R-DUTS/composite_images/photo_0_1_2.jpg"} <= set(
        files
    )
    assert not any(Path(name).name.startswith(".") for name in files)  # no temporaries left
    datamodule = RPHarmonyDataModule(root=output, image_size=32)
    train, val, test = (datamodule.list_records(split) for split in ("train", "val", "test"))
    assert len(train) + len(val) == 8 and len(test) == 4  # 2 of 6 photos are test photos, 2 composites each
    train_photos = {r.target.stem for r in train + val}
    test_photos = {r.target.stem for r in test}
    assert not train_photos & test_photos and len(train_photos | test_photos) == 6
    datamodule.setup("test")
    assert datamodule.datasets["test"][0]["composite"].shape[-2:] == (32, 32)
    manifest = json.loads((output / "build.json").read_text())["subsets"]["R-DUTS"]
    assert manifest["status"] == "complete"
    assert manifest["settings"]["filter"] == "harmony.commands.build_rpharmony.ForegroundChangeFilter"
    assert manifest["counts"]["test_composites"] == 4 and manifest["counts"]["photos"] == 6


def test_two_subsets_share_one_root(tmp_path: Path) -> None:
    images, masks = write_photo_folder(tmp_path, count=3)
    output = tmp_path / "RPHarmony"
    assert main(build_args(images, masks, output)) == 0
    assert main(build_args(images, masks, output, "--subset", "R-ADE20K", "--seed", "1")) == 0
    subsets = {line.split("/")[0] for line in (output / "IHD_train.txt").read_text().split()}
    assert subsets == {"R-DUTS", "R-ADE20K"}
    assert main(["check-data", "--root", str(output), "--dataset", "rpharmony"]) == 0


def test_interrupted_build_resumes_without_rewriting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, masks = write_photo_folder(tmp_path)
    reference_root, resumed_root = tmp_path / "uninterrupted", tmp_path / "resumed"
    assert main(build_args(images, masks, reference_root)) == 0

    real_build_photo, calls = build_module.build_photo, []

    def interrupt_after_three(*args: object, **kwargs: object) -> None:
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(args[0])
        real_build_photo(*args, **kwargs)

    monkeypatch.setattr(build_module, "build_photo", interrupt_after_three)
    assert main(build_args(images, masks, resumed_root)) == 130
    monkeypatch.undo()
    assert not (resumed_root / "IHD_train.txt").exists()
    # Photo 0 also loses one file, as if it had been stopped while being written.
    (resumed_root / "R-DUTS/real_images/photo_0.jpg").unlink()
    before = {p: p.stat().st_mtime_ns for p in (resumed_root / "R-DUTS").rglob("*") if p.is_file()}
    assert main(build_args(images, masks, resumed_root)) == 0
    for path, mtime in before.items():
        if not path.name.startswith("photo_0"):
            assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"
    assert tree_files(resumed_root) == tree_files(reference_root)


def test_resuming_with_other_settings_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, masks = write_photo_folder(tmp_path, count=3)
    output = tmp_path / "out"
    assert main(build_args(images, masks, output)) == 0
    assert main(build_args(images, masks, output, "--seed", "3")) == 2
    assert "seed 0 -> 3" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    (foreign / "R-DUTS").mkdir(parents=True)
    (foreign / "R-DUTS" / "notes.txt").write_text("someone else's data")
    assert main(build_args(images, masks, foreign)) == 2


def test_bad_build_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, masks = write_photo_folder(tmp_path, count=3)
    (masks / "photo_1.png").unlink()
    assert main(build_args(images, masks, tmp_path / "a")) == 2
    assert "photo_1" in capsys.readouterr().err
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(masks / "photo_1.png")
    assert main(build_args(images, masks, tmp_path / "b")) == 2
    assert "photo_1.png" in capsys.readouterr().err  # wrong size
    for extra in (["--keep", "4"], ["--filter", "no.such.Filter"], ["--filter-args", "[1]"]):
        assert main(build_args(images, masks, tmp_path / "c", *extra)) == 2


class MeanBrightnessFilter:
    """Prefers bright (sign 1) or dark (sign -1) foregrounds; counts its calls."""

    calls = 0

    def __init__(self, sign: float = 1.0) -> None:
        self.sign = sign

    def score(self, composite: np.ndarray, mask: np.ndarray, real: np.ndarray) -> float:
        MeanBrightnessFilter.calls += 1
        return self.sign * float(composite[mask > 0].mean())


def test_custom_filter_class_path(tmp_path: Path) -> None:
    images, masks = write_photo_folder(tmp_path, count=4)
    class_path = f"{__name__}.MeanBrightnessFilter"
    brightness = {}
    for sign in (1, -1):
        MeanBrightnessFilter.calls = 0
        output = tmp_path / f"sign{sign}"
        extra = ("--filter", class_path, "--filter-args", json.dumps({"sign": sign}), "--candidates", "4")
        assert main(build_args(images, masks, output, *extra)) == 0
        assert MeanBrightnessFilter.calls == 4 * 4
        manifest = json.loads((output / "build.json").read_text())["subsets"]["R-DUTS"]["settings"]
        assert manifest["filter"] == class_path and manifest["filter_args"] == {"sign": sign}
        brightness[sign] = [
            np.asarray(Image.open(p)).astype(float)[np.asarray(Image.open(m)) > 127].mean()
            for p, m in zip(
                sorted((output / "R-DUTS/composite_images").iterdir()),
                sorted((output / "R-DUTS/masks").iterdir()),
                strict=True,
            )
        ]
    assert all(b >= d - 1 for b, d in zip(brightness[1], brightness[-1], strict=True))
    assert sum(brightness[1]) > sum(brightness[-1]) + 4


def test_aesthetic_filter_loads_local_files_only(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel

    with pytest.raises(HarmonyInputError, match="CLIP model folder"):
        AestheticFilter(tmp_path / "missing", tmp_path / "head.safetensors")
    config = CLIPConfig(
        text_config={
            "vocab_size": 64,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    save_file(
        {"predictor.weight": torch.randn(1, 8), "predictor.bias": torch.zeros(1)},
        tmp_path / "head.safetensors",
    )
    save_file({"weight": torch.randn(2, 8), "bias": torch.zeros(2)}, tmp_path / "wide.safetensors")
    with pytest.raises(HarmonyInputError, match="linear head"):
        AestheticFilter(tmp_path / "clip", tmp_path / "wide.safetensors")
    scorer, class_path = load_filter(
        "AestheticFilter", {"clip_model": str(tmp_path / "clip"), "head": str(tmp_path / "head.safetensors")}
    )
    assert class_path == "harmony.commands.build_rpharmony.AestheticFilter"
    image = photo("rocket", (48, 40))
    mask = np.ones((40, 48), np.float32)
    first, again = scorer.score(image, mask, image), scorer.score(image, mask, image)
    assert np.isfinite(first) and first == again
    assert scorer.score(image[:, ::-1].copy(), mask, image) != first


def test_reproduce_table2_scores_an_rpharmony_root(tmp_path: Path) -> None:
    from harmony.commands import reproduce_table1

    images, masks = write_photo_folder(tmp_path / "photos")
    root = tmp_path / "RPHarmony"
    assert main(build_args(images, masks, root)) == 0
    args = ["--dataset", "rpharmony", "--data-root", str(root), "--output-dir", str(tmp_path / "results")]
    assert reproduce_table1.main([*args, "--workers", "0", "--batch-size", "2"]) == 0
    table = json.loads((tmp_path / "results" / "table2.json").read_text())
    assert {"Composite", "ReinhardLabTransfer", "HistogramMatching"} <= set(table)
    assert table["Composite"]["results"]["R-DUTS"]["n"] == len(list_iharmony4(root, "test"))
    markdown = (tmp_path / "results" / "table2.md").read_text()
    assert "R2R Tab. 2" in markdown and "2362.08" in markdown
