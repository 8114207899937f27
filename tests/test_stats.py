"""``harmony stats`` (foreground-ratio statistics and CDF plot) and the Table 3 layout of reproduce-table1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harmony.cli import main
from harmony.commands.stats import foreground_bucket, foreground_ratio
from harmony.data.records import list_iharmony4
from harmony.metrics import FOREGROUND_BUCKETS, EvaluationProtocol, HarmonizationEvaluator
from tests.fixtures.trees import make_iharmony4_tree

BUCKETS = [bucket for bucket, _, _ in FOREGROUND_BUCKETS]


def _tree_with_masks(root: Path, per_subset: dict[str, tuple[int, int]], size: int, rows: list[int]) -> Path:
    """An iHarmony4 tree of ``size×size`` samples whose masks cover the first ``rows[i]`` rows.

    ``rows`` follows the listing order (every train sample, then every test sample); the ratio of the
    i-th mask is ``rows[i] / size`` exactly.
    """
    make_iharmony4_tree(root, per_subset, size=(size, size))
    splits = [
        split for index, split in enumerate(("train", "test")) if any(c[index] for c in per_subset.values())
    ]
    records = [record for split in splits for record in list_iharmony4(root, split)]
    assert len(records) == len(rows)
    for record, count in zip(records, rows, strict=True):
        mask = np.zeros((size, size), np.uint8)
        mask[:count] = 255
        Image.fromarray(mask).save(record.mask)
    return root


def _stats_json(tmp_path: Path, *args: str) -> dict:
    output = tmp_path / "stats.json"
    assert main(["stats", *args, "--workers", "2", "--json", str(output)]) == 0
    return json.loads(output.read_text())


def test_counts_per_subset_and_bucket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 64 px masks upscale exactly (×4, nearest) to the 256 px the evaluator scores at: ratio = rows / 64.
    # Train: HCOCO 16/64 (25 %), HFlickr 8/64 (12.5 %). Test: HCOCO 1/64 (1.6 %), 6/64 (9.4 %),
    # 32/64 (50 %); HFlickr 1/64, 2/64.
    rows = [16, 8, 1, 6, 32, 1, 2]
    root = _tree_with_masks(tmp_path / "tree", {"HCOCO": (1, 3), "HFlickr": (1, 2)}, 64, rows)
    report = _stats_json(tmp_path, "--root", str(root), "--split", "test")
    groups = report["roots"]["tree"]["groups"]
    assert list(groups) == ["HCOCO", "HFlickr", "all"]
    assert {b: groups["HCOCO"]["buckets"][b]["n"] for b in BUCKETS} == {
        "fg_0_5": 1,
        "fg_5_15": 1,
        "fg_15_100": 1,
    }
    assert {b: groups["HFlickr"]["buckets"][b]["n"] for b in BUCKETS} == {
        "fg_0_5": 2,
        "fg_5_15": 0,
        "fg_15_100": 0,
    }
    overall = groups["all"]
    assert overall["n"] == 5
    assert {b: overall["buckets"][b]["n"] for b in BUCKETS} == {"fg_0_5": 3, "fg_5_15": 1, "fg_15_100": 1}
    assert overall["buckets"]["fg_0_5"]["share"] == pytest.approx(0.6)
    assert overall["mean"] == pytest.approx((1 + 6 + 32 + 1 + 2) / 5 / 64)
    assert overall["median"] == pytest.approx(2 / 64)
    assert groups["HCOCO"]["median"] == pytest.approx(6 / 64)
    printed = capsys.readouterr().out
    assert "fg_0_5" in printed and "3 (60.0 %)" in printed

    everything = _stats_json(tmp_path, "--root", str(root), "--split", "all")["roots"]["tree"]["groups"]
    assert everything["all"]["n"] == 7
    assert {b: everything["all"]["buckets"][b]["n"] for b in BUCKETS} == {
        "fg_0_5": 3,
        "fg_5_15": 2,
        "fg_15_100": 2,
    }


def test_bucket_boundaries_are_the_evaluators(tmp_path: Path) -> None:
    # At 20×20 the ratios 0.05, 0.15 and 1.0 are exact in floating point: 20, 60 and 400 of 400 pixels.
    size = 20
    pixels = [19, 20, 59, 60, 400]
    masks = np.zeros((len(pixels), size * size), np.float32)
    for mask, count in zip(masks, pixels, strict=True):
        mask[:count] = 1.0
    masks = masks.reshape(-1, size, size)
    ratios = [foreground_ratio(mask, size) for mask in masks]
    assert ratios == [19 / 400, 0.05, 59 / 400, 0.15, 1.0]

    protocol = EvaluationProtocol(
        name="tiny", size=size, resample=Image.BILINEAR, paste_background=False, psnr_range="fixed"
    )
    evaluator = HarmonizationEvaluator(protocol)
    images = torch.zeros(len(pixels), 3, size, size, dtype=torch.uint8)
    evaluator.update(images, images, torch.from_numpy(masks)[:, None], None, ["HCOCO"] * len(pixels))
    results = evaluator.compute()
    evaluator_counts = {bucket: results[bucket]["n"] if bucket in results else 0 for bucket in BUCKETS}
    assert evaluator_counts == {"fg_0_5": 1, "fg_5_15": 2, "fg_15_100": 2}
    ours = [foreground_bucket(ratio) for ratio in ratios]
    assert {bucket: ours.count(bucket) for bucket in BUCKETS} == evaluator_counts
    assert ours == ["fg_0_5", "fg_5_15", "fg_5_15", "fg_15_100", "fg_15_100"]

    # The same masks as files, through the command (PNG masks at 20 px, scored at --size 20).
    root = make_iharmony4_tree(tmp_path / "tree", {"HCOCO": (0, len(pixels))}, size=(size, size))
    for record, mask in zip(list_iharmony4(root, "test"), masks, strict=True):
        Image.fromarray((mask * 255).astype(np.uint8)).save(record.mask)
    groups = _stats_json(tmp_path, "--root", str(root), "--size", str(size))["roots"]["tree"]["groups"]
    assert {b: groups["all"]["buckets"][b]["n"] for b in BUCKETS} == evaluator_counts


def test_two_roots_and_cdf_plot(
    tmp_path: Path, iharmony4_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    second = _tree_with_masks(tmp_path / "humans", {"HCOCO": (0, 2)}, 64, [1, 40])
    plot = tmp_path / "figures" / "cdf.png"
    report = _stats_json(tmp_path, "--root", str(iharmony4_root), "--root", str(second), "--plot", str(plot))
    labels = list(report["roots"])
    assert labels == [iharmony4_root.name, "humans"]
    assert report["roots"][labels[0]]["groups"]["all"]["n"] == len(list_iharmony4(iharmony4_root, "test"))
    assert report["roots"]["humans"]["groups"]["all"]["n"] == 2
    printed = capsys.readouterr().out
    assert f"{labels[0]} (" in printed and "humans (" in printed and f"wrote {plot}" in printed
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(plot) as image:
        image.verify()
    assert [path.name for path in plot.parent.iterdir()] == ["cdf.png"]  # no temporary file left


def test_bad_root_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--root", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("harmony: error:") and "missing" in error and "\n" not in error
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["stats", "--root", str(empty), "--split", "all"]) == 2
    assert "no list file" in capsys.readouterr().err
    assert main(["stats", "--root", str(empty), "--plot", str(tmp_path / "cdf.foo")]) == 2
    assert "unsupported plot format" in capsys.readouterr().err


def test_reproduce_table1_has_table3_layout(iharmony4_root: Path, tmp_path: Path) -> None:
    from harmony.commands import reproduce_table1

    args = [
        "--data-root",
        str(iharmony4_root),
        "--output-dir",
        str(tmp_path),
        "--workers",
        "0",
        "--batch-size",
        "4",
    ]
    assert reproduce_table1.main([*args, "--rows", "Composite"]) == 0
    markdown = (tmp_path / "table1.md").read_text()
    table = json.loads((tmp_path / "table1.json").read_text())
    assert "## Per foreground ratio (DiffHarmony++ Table 3 layout)" in markdown
    assert (
        "| row | source | 0 % ~ 5 % MSE / fMSE | 5 % ~ 15 % MSE / fMSE | 15 % ~ 100 % MSE / fMSE |"
        in markdown
    )
    bucket_part = markdown.split("Table 3 layout")[1]
    for row in ("Composite", "Composite (bcmi)"):
        results = table[row]["results"]
        cells = [
            f"{results[b]['mse']:.2f} / {results[b]['fmse']:.2f}" if b in results else "–" for b in BUCKETS
        ]
        assert f"| {row} | harmony ({table[row]['protocol']}) | " + " | ".join(cells) + " |" in bucket_part
    counts = [str(table["Composite"]["results"].get(b, {"n": 0})["n"]) for b in BUCKETS]
    assert "| N_samples | harmony | " + " | ".join(counts) + " |" in bucket_part
    assert sum(map(int, counts)) == table["Composite"]["results"]["all"]["n"]
