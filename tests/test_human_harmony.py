"""``harmony build-human-harmony``: part unions, generation, classifier selection, split, resume."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import harmony.commands.build_human_harmony as builder
from harmony.cli import main
from harmony.data import HumanHarmonyDataModule
from harmony.data.records import list_iharmony4
from tests.conftest import REPO_ROOT, fit_tiny


def _photos(folder: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """Four photos: two label maps, one folder of part masks, one photo without parts."""
    images, parts = folder / "images", folder / "parts"
    images.mkdir(parents=True)
    parts.mkdir()
    rng = np.random.default_rng(0)
    unions = {}
    for index, name in enumerate(("anna", "ben", "cleo", "dora")):
        height, width = 40 + 4 * index, 36
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(images / f"{name}.png")
        labels = np.zeros((height, width), np.uint8)
        if name == "anna":
            labels[5:20, 4:14], labels[22:30, 10:30] = 3, 7  # two garments, background 0
            Image.fromarray(labels).save(parts / f"{name}.png")
        elif name == "ben":
            labels[10:35, 8:20] = 1
            Image.fromarray(labels).save(parts / f"{name}.png")
        elif name == "cleo":
            (parts / name).mkdir()
            for k, (rows, cols) in enumerate(((slice(2, 12), slice(2, 30)), (slice(8, 40), slice(20, 26)))):
                part = np.zeros((height, width), np.uint8)
                part[rows, cols] = 255
                labels[rows, cols] = 1
                Image.fromarray(part).save(parts / name / f"part{k}.png")
        else:
            Image.fromarray(labels).save(parts / f"{name}.png")  # background only: skipped
        unions[name] = labels > 0
    return images, parts, unions


def _build(images: Path, parts: Path, output: Path, inverse: Path, classifier: Path) -> int:
    command = ["build-human-harmony", "--images", str(images), "--parts", str(parts), "--output", str(output)]
    command += ["--inverse-checkpoint", str(inverse), "--classifier", str(classifier), "--candidates", "3"]
    return main([*command, "--device", "cpu", "--no-progress"])


def test_build_human_harmony_makes_a_tree_the_readers_accept(
    inverse_checkpoint: Path, classifier_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, parts, unions = _photos(tmp_path)
    output = tmp_path / "HumanHarmony"
    assert _build(images, parts, output, inverse_checkpoint, classifier_checkpoint) == 0
    subset = output / "HumanHarmony"
    for name in ("anna", "ben", "cleo"):
        mask = np.asarray(Image.open(subset / "masks" / f"{name}_1.png")) > 127
        np.testing.assert_array_equal(mask, unions[name])  # the union of every non-background part
        composite = np.asarray(Image.open(subset / "composite_images" / f"{name}_1_1.png").convert("RGB"))
        real = np.asarray(Image.open(subset / "real_images" / f"{name}.png").convert("RGB"))
        np.testing.assert_array_equal(composite[~mask], real[~mask])
    assert not (subset / "masks" / "dora_1.png").exists()
    assert "1 without parts skipped" in capsys.readouterr().out

    with (output / "selection.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["id"] for row in rows] == ["anna", "ben", "cleo"]
    for row in rows:
        scores = [float(row[f"p_{k}"]) for k in range(3)]
        kept = int(row["kept"])
        assert kept == int(np.argmax(scores))  # the least harmonious candidate is kept
        kept_file = output / "candidates" / "HumanHarmony" / "composite_images" / f"{row['id']}_1_{kept}.png"
        chosen = subset / "composite_images" / f"{row['id']}_1_1.png"
        assert chosen.read_bytes() == kept_file.read_bytes()

    train, test = (list_iharmony4(output, split) for split in ("train", "test"))
    assert len(train) == 2 and len(test) == 1  # iHarmony4's test share of 3 photos: at least one
    assert main(["check-data", "--root", str(output), "--dataset", "humanharmony"]) == 0
    data = HumanHarmonyDataModule(root=output, image_size=32, batch_size=2, val_fraction=0.0)
    data.setup("fit")
    data.setup("test")
    assert len(data.datasets["train"]) == 2 and len(data.datasets["test"]) == 1
    assert next(iter(data.train_dataloader()))["composite"].shape == (2, 3, 32, 32)

    # The last link of the chain: a method trains and tests on the new set.
    config = str(REPO_ROOT / "tests" / "configs" / "semi_supervised_parametric_iharmony4.yaml")
    data_args = ["--data", "harmony.data.HumanHarmonyDataModule", f"--data.init_args.root={output}"]
    assert main(["fit", "--config", config, *data_args, "--trainer.fast_dev_run=true"]) == 0


def test_an_interrupted_build_resumes_to_the_same_tree(
    inverse_checkpoint: Path,
    classifier_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images, parts, _ = _photos(tmp_path)
    reference = tmp_path / "uninterrupted"
    assert _build(images, parts, reference, inverse_checkpoint, classifier_checkpoint) == 0

    output = tmp_path / "interrupted"
    calls = {"count": 0}
    read_batch = builder.read_batch

    def interrupted_read_batch(paths: list[Path], size: int) -> object:
        calls["count"] += 1
        if calls["count"] == 2:
            raise KeyboardInterrupt
        return read_batch(paths, size)

    monkeypatch.setattr(builder, "read_batch", interrupted_read_batch)
    assert _build(images, parts, output, inverse_checkpoint, classifier_checkpoint) == 130
    assert not (output / "IHD_train.txt").exists()
    assert len(list((output / "HumanHarmony" / "composite_images").iterdir())) == 1
    monkeypatch.setattr(builder, "read_batch", read_batch)
    assert _build(images, parts, output, inverse_checkpoint, classifier_checkpoint) == 0
    assert not [path for path in output.rglob(".*")]  # no temporary file left behind
    done = sorted(path.relative_to(output) for path in output.rglob("*") if path.is_file())
    assert done == sorted(path.relative_to(reference) for path in reference.rglob("*") if path.is_file())
    for relative in done:
        if relative.name != "build.json":
            assert (output / relative).read_bytes() == (reference / relative).read_bytes(), relative


def test_imaterialist_run_length_parts() -> None:
    # Pixels are numbered down the columns from 1: "1 2" is the top two pixels of column 0.
    mask = builder.decode_rle("1 2 7 1", height=3, width=3)
    expected = np.zeros((3, 3), bool)
    expected[0:2, 0] = True
    expected[0, 2] = True
    np.testing.assert_array_equal(mask, expected)


def test_imaterialist_csv_parts_are_united(tmp_path: Path) -> None:
    table = tmp_path / "train.csv"
    table.write_text("ImageId,EncodedPixels,Height,Width,ClassId\nx,1 2,3,3,1\nx,8 2,3,3,4\ny,1 1,3,3,2\n")
    parts = builder.read_imaterialist(table)
    union = builder.union_mask(builder.Photo("x", tmp_path / "x.jpg"), (3, 3), 0, parts)
    assert union.sum() == 4 and union[0, 0] and union[1, 2] and union[2, 2]
    with pytest.raises(builder.HarmonyInputError, match="3x3"):
        builder.union_mask(builder.Photo("x", tmp_path / "x.jpg"), (4, 3), 0, parts)


def test_a_photo_without_parts_file_is_one_clear_line(
    inverse_checkpoint: Path, classifier_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, parts, _ = _photos(tmp_path)
    (parts / "ben.png").unlink()
    assert _build(images, parts, tmp_path / "out", inverse_checkpoint, classifier_checkpoint) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("harmony: error:") and "ben" in error and "\n" not in error


def test_a_mask_aware_classifier_sees_each_candidates_mask(
    inverse_checkpoint: Path, iharmony4_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mask_options = ["--model.init_args.mask_input=true", "--model.init_args.mask_statistics=true"]
    mask_options.append("--model.init_args.backbone.init_args.in_channels=4")
    classifier = fit_tiny(
        "harmony_classifier_iharmony4.yaml", iharmony4_root, tmp_path / "run", 1, *mask_options
    )
    seen: list[np.ndarray] = []
    read_mask_batch = builder.read_mask_batch

    def recording(images: list[Path], masks: list[Path], size: int) -> object:
        batch = read_mask_batch(images, masks, size)
        seen.append(batch.numpy())
        return batch

    monkeypatch.setattr(builder, "read_mask_batch", recording)
    images, parts, _ = _photos(tmp_path)
    assert _build(images, parts, tmp_path / "out", inverse_checkpoint, classifier) == 0
    assert len(seen) == 3 and all(batch.shape[1:] == (1, 32, 32) for batch in seen)
    assert all(batch.sum() > 0 for batch in seen)
