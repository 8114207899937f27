"""``harmony test`` with two CPU processes (DDP, gloo) scores exactly like one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harmony.cli import main
from tests.fixtures.trees import make_iharmony4_tree

# HNight is not an iHarmony4 subset, so no process knows its name unless another one tells it.
SUBSETS = ["HCOCO", "HAdobe5k", "HFlickr", "HNight"]


def make_odd_tree(root: Path) -> list[str]:
    """A 9-image test split whose only ``HNight`` image is its second one; returns the list file's lines.

    Two processes split it 5 + 4: Lightning's default ``DistributedSampler`` would pad the second share
    with the first image (HCOCO) again, and the HNight image goes to the second process only.
    """
    make_iharmony4_tree(root, {"HCOCO": (1, 4), "HAdobe5k": (1, 2), "HFlickr": (1, 2), "Hday2night": (1, 1)})
    (root / "Hday2night").rename(root / "HNight")
    lines = [line.replace("Hday2night/", "HNight/") for line in (root / "IHD_test.txt").read_text().split()]
    night = next(line for line in lines if line.startswith("HNight/"))
    lines.remove(night)
    lines.insert(1, night)
    (root / "IHD_test.txt").write_text("\n".join(lines) + "\n")
    return lines


def harmony_test_args(root: Path, logs: Path) -> list[str]:
    return [
        "test",
        "--model=harmony.methods.ReinhardLabTransfer",
        "--data=harmony.data.IHarmony4DataModule",
        f"--data.init_args.root={root}",
        f"--data.init_args.subsets=[{','.join(SUBSETS)}]",
        "--data.init_args.image_size=32",
        "--data.init_args.batch_size=2",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={logs}",
    ]


def written_results(logs: Path) -> dict:
    (path,) = logs.rglob("test_metrics.json")
    # Written atomically: no temporary file is left beside it.
    assert not [other for other in path.parent.iterdir() if other.name.startswith(".")]
    return json.loads(path.read_text())


def test_two_processes_score_exactly_like_one(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    lines = make_odd_tree(root)
    assert len(lines) % 2 == 1

    assert main([*harmony_test_args(root, tmp_path / "one"), "--trainer.devices=1"]) == 0
    one = written_results(tmp_path / "one")

    # ddp, as users run it: its launcher starts rank 1 by re-running this command line.
    two_args = [
        *harmony_test_args(root, tmp_path / "two"),
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
    ]
    run = subprocess.run(
        [sys.executable, "-m", "harmony", *two_args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "Starting with 2 processes" in output
    assert output.count("ReinhardLabTransfer\ngroup") == 1  # the table is printed by rank 0 only
    two = written_results(tmp_path / "two")

    # Not vacuous: a padded sampler would score the first HCOCO image twice (n = 10, HCOCO 5), and a
    # process that never saw HNight would not know its name.
    assert two["results"]["all"]["n"] == len(lines) == 9
    assert two["results"]["HCOCO"]["n"] == 4
    assert two["results"]["HNight"]["n"] == 1
    assert list(two["results"]) == ["HCOCO", "HAdobe5k", "HFlickr", "HNight", "all", "fg_5_15", "fg_15_100"]
    assert two == one
