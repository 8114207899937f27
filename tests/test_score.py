"""``harmony score`` end to end on small generated iHarmony4-layout trees."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harmony.commands import score
from harmony.errors import HarmonyInputError

# (subset, composite stem, (width, height)); Hday2night ids contain hyphens.
SAMPLES = [
    ("HCOCO", "c0001_1_1", (40, 30)),
    ("HCOCO", "c0002_2_3", (64, 48)),
    ("HAdobe5k", "a0001_1_2", (48, 64)),
    ("Hday2night", "d1048-20120628-200951_1_3", (50, 40)),
    ("HFlickr", "f0007_1_1", (32, 32)),
]


def _write_tree(root: Path, mask_suffix: str = ".png", write_list: bool = True) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for index, (subset, stem, (width, height)) in enumerate(SAMPLES):
        for folder in ("composite_images", "masks", "real_images"):
            (root / subset / folder).mkdir(parents=True, exist_ok=True)
        real_id, mask_number, _ = stem.rsplit("_", 2)
        real = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        mask = np.zeros((height, width), np.uint8)
        mask[height // 4 : height // 4 + 4 + 2 * index, width // 3 : width // 3 + 6 + 3 * index] = 255
        composite = real.copy()
        composite[mask > 0] = (composite[mask > 0] // 2 + 40).astype(np.uint8)
        Image.fromarray(real).save(root / subset / "real_images" / f"{real_id}.png")
        Image.fromarray(mask).save(
            root / subset / "masks" / f"{real_id}_{mask_number}{mask_suffix}", quality=100
        )
        Image.fromarray(composite).save(root / subset / "composite_images" / f"{stem}.png")
        lines.append(f"{subset}/composite_images/{stem}.png")
    if write_list:
        (root / "IHD_test.txt").write_text("\n".join(lines) + "\n")
    return root


def _write_predictions(folder: Path, size: tuple[int, int] = (52, 52), seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for _, stem, _ in SAMPLES:
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            folder / f"{stem}.png"
        )
    return folder


def _expected_per_image(root: Path, predictions: Path) -> list[dict[str, float]]:
    """An independent numpy computation of the default protocol for the generated tree."""

    def load(path: Path, resample: int) -> np.ndarray:
        image = Image.open(path)
        return np.asarray(image.resize((256, 256), resample), dtype=np.float64)

    rows = []
    for subset, stem, _ in SAMPLES:
        real_id, mask_number, _ = stem.rsplit("_", 2)
        real = load(root / subset / "real_images" / f"{real_id}.png", Image.BILINEAR)
        composite = load(root / subset / "composite_images" / f"{stem}.png", Image.BILINEAR)
        prediction = load(predictions / f"{stem}.png", Image.BILINEAR)
        mask = load(root / subset / "masks" / f"{real_id}_{mask_number}.png", Image.NEAREST)[..., None] > 127
        pasted = np.where(mask, prediction, composite)
        squared_error = (pasted - real) ** 2
        mse = squared_error.mean()
        rows.append(
            {
                "subset": subset,
                "mse": mse,
                "psnr": 10 * math.log10(255**2 / mse),
                "fmse": squared_error[mask[..., 0]].sum() / (3 * mask.sum()),
                "ratio": mask.sum() / 256**2,
            }
        )
    return rows


def _run(root: Path, predictions: Path, *extra: str, workers: int = 2) -> int:
    arguments = ["--data-root", str(root), "--predictions", str(predictions), "--workers", str(workers)]
    return score.main([*arguments, *extra])


@pytest.mark.parametrize("workers", [1, 2])
def test_scores_agree_with_an_independent_computation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: int
) -> None:
    root = _write_tree(tmp_path / "data")
    predictions = _write_predictions(tmp_path / "predictions")
    output = tmp_path / "out" / "scores.json"

    assert _run(root, predictions, "--output", str(output), workers=workers) == 0

    payload = json.loads(output.read_text())
    assert set(payload) == {"protocol", "image_size", "paste_background", "results"}
    assert (payload["protocol"], payload["image_size"], payload["paste_background"]) == (
        "iharmony4",
        256,
        True,
    )
    results = payload["results"]
    assert list(results)[:5] == ["HCOCO", "HAdobe5k", "HFlickr", "Hday2night", "all"]
    expected = _expected_per_image(root, predictions)
    groups = {"all": expected, **{s: [r for r in expected if r["subset"] == s] for s, _, _ in SAMPLES}}
    for group, rows in groups.items():
        assert results[group]["n"] == len(rows)
        for metric in ("mse", "psnr", "fmse"):
            assert results[group][metric] == pytest.approx(np.mean([r[metric] for r in rows]), rel=1e-9), (
                group,
                metric,
            )
    assert sum(results[bucket]["n"] for bucket in results if bucket.startswith("fg_")) == len(SAMPLES)

    out = capsys.readouterr().out
    assert "protocol iharmony4, 256×256, background paste on: 5 images, 0 empty masks" in out
    assert "Hday2night" in out


def test_perfect_predictions(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "data")
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    for subset, stem, _ in SAMPLES:
        real_id = stem.rsplit("_", 2)[0]
        (predictions / f"{stem}.png").write_bytes(
            (root / subset / "real_images" / f"{real_id}.png").read_bytes()
        )
    unpasted, pasted = tmp_path / "unpasted.json", tmp_path / "pasted.json"
    assert _run(root, predictions, "--no-paste-background", "--output", str(unpasted)) == 0
    assert _run(root, predictions, "--output", str(pasted)) == 0

    overall = json.loads(unpasted.read_text())["results"]["all"]
    assert (overall["mse"], overall["fmse"], overall["psnr"]) == (0.0, 0.0, 100.0)
    assert overall["n_psnr_capped"] == len(SAMPLES)
    # The pasted composite background carries foreground blended in by resizing next to the mask edge.
    overall = json.loads(pasted.read_text())["results"]["all"]
    assert overall["fmse"] == 0.0
    assert 0.0 < overall["mse"] < 10.0


def test_missing_prediction_names_the_file_and_count(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "data")
    predictions = _write_predictions(tmp_path / "predictions")
    (predictions / "a0001_1_2.png").unlink()
    (predictions / "f0007_1_1.png").unlink()
    output = tmp_path / "scores.json"
    with pytest.raises(HarmonyInputError) as error:
        _run(root, predictions, "--output", str(output))
    message = str(error.value)
    assert "a0001_1_2.png" in message and "2 of 5" in message
    assert "\n" not in message
    assert not output.exists()


def test_jpg_predictions_are_found(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "data")
    predictions = _write_predictions(tmp_path / "predictions")
    png = predictions / "c0001_1_1.png"
    Image.open(png).save(predictions / "c0001_1_1.jpg")
    png.unlink()
    assert _run(root, predictions) == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_mask_size_mismatch_names_both_files(tmp_path: Path, workers: int) -> None:
    root = _write_tree(tmp_path / "data")
    predictions = _write_predictions(tmp_path / "predictions")
    mask_path = root / "HAdobe5k" / "masks" / "a0001_1.png"
    Image.new("L", (20, 10)).save(mask_path)
    output = tmp_path / "scores.json"
    with pytest.raises(HarmonyInputError) as error:
        _run(root, predictions, "--output", str(output), workers=workers)
    message = str(error.value)
    assert "a0001_1.png" in message and "a0001.png" in message
    assert "20x10" in message and "48x64" in message
    assert not output.exists()


def test_undecodable_prediction_fails_without_writing_json(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "data")
    predictions = _write_predictions(tmp_path / "predictions")
    (predictions / "c0002_2_3.png").write_bytes(b"not an image")
    output = tmp_path / "scores.json"
    with pytest.raises(HarmonyInputError, match="c0002_2_3.png"):
        _run(root, predictions, "--output", str(output))
    assert not output.exists()


def test_missing_real_image_is_reported_before_decoding(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "data")
    predictions = _write_predictions(tmp_path / "predictions")
    (root / "HFlickr" / "real_images" / "f0007.png").unlink()
    with pytest.raises(HarmonyInputError, match=r"f0007\.(png|jpg).*file not found"):
        _run(root, predictions)


def test_listing_falls_back_to_per_subset_lists_then_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _write_tree(tmp_path / "data", mask_suffix=".jpg", write_list=False)
    (root / "HCOCO" / "HCOCO_test.txt").write_text("c0002_2_3.png\n")
    records = score.list_iharmony4_triplets(root, "test")
    assert [(r.subset, r.name) for r in records] == [("HCOCO", "c0002_2_3")]
    assert records[0].mask.name == "c0002_2.jpg" and records[0].target.name == "c0002.png"

    (root / "HCOCO" / "HCOCO_test.txt").unlink()
    records = score.list_iharmony4_triplets(root, "test")
    assert [r.subset for r in records] == ["HCOCO", "HCOCO", "HAdobe5k", "HFlickr", "Hday2night"]
    hday = next(r for r in records if r.subset == "Hday2night")
    assert hday.mask.name == "d1048-20120628-200951_1.jpg" and hday.target.name == "d1048-20120628-200951.png"
    assert "scoring every composite" in capsys.readouterr().err


def test_bcmi_does_not_need_composites_and_skips_the_paste(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "data")
    predictions = _write_predictions(tmp_path / "predictions")
    (root / "HCOCO" / "composite_images" / "c0001_1_1.png").unlink()
    output = tmp_path / "scores.json"
    assert _run(root, predictions, "--protocol", "bcmi", "--output", str(output)) == 0
    payload = json.loads(output.read_text())
    assert (payload["protocol"], payload["paste_background"]) == ("bcmi", False)
    with pytest.raises(HarmonyInputError, match="c0001_1_1.png: file not found"):
        _run(root, predictions)


def test_no_paste_background_is_recorded(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "data")
    predictions = _write_predictions(tmp_path / "predictions")
    pasted, unpasted = tmp_path / "pasted.json", tmp_path / "unpasted.json"
    assert _run(root, predictions, "--output", str(pasted)) == 0
    assert _run(root, predictions, "--no-paste-background", "--output", str(unpasted)) == 0
    with_paste = json.loads(pasted.read_text())
    without_paste = json.loads(unpasted.read_text())
    assert without_paste["paste_background"] is False
    assert without_paste["results"]["all"]["fmse"] == pytest.approx(with_paste["results"]["all"]["fmse"])
    assert without_paste["results"]["all"]["mse"] > with_paste["results"]["all"]["mse"]


def test_bad_arguments(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "data")
    predictions = _write_predictions(tmp_path / "predictions")
    with pytest.raises(HarmonyInputError, match="--workers"):
        score.main(["--data-root", str(root), "--predictions", str(predictions), "--workers", "0"])
    with pytest.raises(HarmonyInputError, match="predictions folder not found"):
        _run(root, tmp_path / "nowhere")
    with pytest.raises(HarmonyInputError, match="data root not found"):
        _run(tmp_path / "nowhere", predictions)
    with pytest.raises(HarmonyInputError, match="invalid choice: 'dovenet'"):
        _run(root, predictions, "--protocol", "dovenet")
