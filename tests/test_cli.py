from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harmony.cli import TOOL_COMMANDS, main
from harmony.data.records import list_iharmony4
from tests.conftest import REPO_ROOT

EXPERIMENTS = sorted((REPO_ROOT / "experiments").rglob("*.yaml"))
TEST_CONFIGS = sorted((REPO_ROOT / "tests" / "configs").glob("*.yaml"))
# Overlays change part of a base config and are given after it (`--config BASE --config OVERLAY`).
OVERLAY_BASES = {"r2r_rpharmony.yaml": "r2r.yaml", "quickstart_on_human_harmony.yaml": "quickstart.yaml"}


def test_python_m_harmony_help_and_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "harmony", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in (
        "fit",
        "validate",
        "test",
        "predict",
        "score",
        "summary",
        "check-data",
        "harmonize",
        "quickstart",
    ):
        assert f"  {command} " in out
    version = subprocess.run(
        [sys.executable, "-m", "harmony", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("harmony ")


@pytest.mark.parametrize("config", EXPERIMENTS + TEST_CONFIGS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_config_parses(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = OVERLAY_BASES.get(config.name)
    configs = ["--config", str(config.parent / base)] if base else []
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *configs, "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


@pytest.mark.parametrize("baseline", ["Composite", "ReinhardLabTransfer", "HistogramMatching"])
def test_baselines_test_and_predict(baseline: str, iharmony4_root: Path, tmp_path: Path) -> None:
    config = str(REPO_ROOT / "tests" / "configs" / "baseline_iharmony4.yaml")
    common = [
        "--config",
        config,
        "--model",
        f"harmony.methods.{baseline}",
        f"--data.init_args.root={iharmony4_root}",
    ]
    assert main(["test", *common]) == 0
    predictions = tmp_path / "predictions"
    assert main(["predict", *common, f"--model.init_args.predictions_dir={predictions}"]) == 0
    records = list_iharmony4(iharmony4_root, "test")
    for record in records:
        output = np.asarray(Image.open(predictions / f"{record.name}.png"))
        composite = np.asarray(Image.open(record.composite).convert("RGB"))
        assert output.shape == composite.shape  # written at the original resolution
        background = np.asarray(Image.open(record.mask).convert("L")) == 0
        np.testing.assert_array_equal(output[background], composite[background])
        if baseline == "Composite":
            # Training-free methods predict from the original file, not the 32-px batch: no resampling.
            np.testing.assert_array_equal(output, composite)


def test_harmony_test_agrees_with_harmony_score(tmp_path: Path) -> None:
    from harmony.cli import make_cli
    from harmony.commands import score
    from harmony.methods import ReinhardLabTransfer
    from tests.fixtures.trees import make_iharmony4_tree

    # Originals at the evaluator's size: predictions are written without resampling, so the two paths
    # (in-process `harmony test`, and `harmony predict` files scored by `harmony score`) must agree.
    root = make_iharmony4_tree(tmp_path / "tree", {"HCOCO": (0, 3), "Hday2night": (0, 2)}, size=(256, 256))
    predictions = tmp_path / "predictions"
    config = str(REPO_ROOT / "tests" / "configs" / "baseline_iharmony4.yaml")
    common = [
        "--config",
        config,
        "--model",
        "harmony.methods.ReinhardLabTransfer",
        f"--data.init_args.root={root}",
    ]
    common += ["--data.init_args.image_size=256"]
    assert main(["predict", *common, f"--model.init_args.predictions_dir={predictions}"]) == 0
    assert (
        score.main(
            [
                "--data-root",
                str(root),
                "--predictions",
                str(predictions),
                "--output",
                str(tmp_path / "s.json"),
            ]
        )
        == 0
    )
    scored = json.loads((tmp_path / "s.json").read_text())["results"]

    cli = make_cli(common, run=False)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert isinstance(cli.model, ReinhardLabTransfer)
    tested = cli.model.test_results
    assert set(tested) == set(scored)
    for group in scored:
        for metric in ("n", "mse", "psnr", "fmse", "ssim"):
            assert tested[group][metric] == scored[group][metric], (group, metric)


def test_summary_counts_parameters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(REPO_ROOT / "tests" / "configs" / "baseline_iharmony4.yaml")
    assert main(["summary", "--config", config, "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts == {"total": 0, "trainable": 0, "children": {}}
    assert main(["summary", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: config file not found" in capsys.readouterr().err


def test_check_data_counts_and_problems(
    iharmony4_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    # The tiny tree is sound but far smaller than the official splits: counts are problems.
    assert main(["check-data", "--root", str(iharmony4_root), "--split", "test"]) == 1
    out = capsys.readouterr().out
    assert "HCOCO" in out and "expected 4283" in out
    bad = tmp_path / "bad"
    shutil.copytree(iharmony4_root, bad)
    records = list_iharmony4(bad, "test")
    Image.new("L", (48, 40), 0).save(records[0].mask)
    records[1].target.write_bytes(b"broken")
    Image.new("L", (10, 10), 255).save(records[2].mask)
    assert main(["check-data", "--root", str(bad), "--split", "test"]) == 1
    out = capsys.readouterr().out
    assert f"{records[0].mask}: empty mask" in out
    assert f"{records[1].target}: cannot decode" in out
    assert f"mask {records[2].mask} is 10x10" in out


def test_reproduce_table1_without_data_is_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "harmony.commands.reproduce_table1",
            "--data-root",
            str(tmp_path / "nope"),
            "--output-dir",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "data/README.md" in result.stderr
    assert not (tmp_path / "r").exists()


def test_reproduce_table1_composite_row_equals_score(iharmony4_root: Path, tmp_path: Path) -> None:
    from harmony.commands import reproduce_table1

    assert (
        reproduce_table1.main(
            [
                "--data-root",
                str(iharmony4_root),
                "--output-dir",
                str(tmp_path),
                "--workers",
                "0",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    table = json.loads((tmp_path / "table1.json").read_text())
    assert {"Composite", "ReinhardLabTransfer", "HistogramMatching", "Composite (bcmi)"} <= set(table)
    scored = reproduce_table1.score_composites(iharmony4_root, "iharmony4")
    for group, metrics in scored.items():
        for metric in ("n", "mse", "psnr", "fmse", "ssim", "n_empty_mask"):
            assert table["Composite"]["results"][group][metric] == metrics[metric], (group, metric)
    assert "R2R Tab. 1" in (tmp_path / "table1.md").read_text()


def test_check_data_takes_partial_roots_folders_without_ground_truth_and_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fixtures.trees import make_iharmony4_tree

    partial = make_iharmony4_tree(tmp_path / "partial", {"HCOCO": (0, 3)})
    records = list_iharmony4(partial, "test")
    gray = np.asarray(Image.open(records[0].composite).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray).save(records[0].composite)
    Image.new("L", Image.open(records[1].mask).size, 255).save(records[1].mask)
    assert main(["check-data", "--root", str(partial), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "HAdobe5k           0  absent (note: a partial root)" in out
    assert "HCOCO              3  official 4283 (note: a partial root)" in out
    assert f"{records[0].composite}: 16-bit" in out and f"{records[1].mask}: covers the whole image" in out
    assert "OK: no problems found, 2 warning(s)" in out

    folders = tmp_path / "own"
    for name in ("composite", "mask"):
        (folders / name).mkdir(parents=True)
    for record in records[1:]:
        shutil.copy(record.composite, folders / "composite" / record.composite.name)
        shutil.copy(record.mask, folders / "mask" / f"{record.composite.stem}.png")
    assert main(["check-data", "--root", str(folders), "--dataset", "folders", "--split", "test"]) == 0
    assert "2 samples, no ground truth (checked without)" in capsys.readouterr().out


def test_the_entry_point_imports_no_heavy_library() -> None:
    """`harmony --version` and `--help` start at once: harmony.cli loads neither torch nor Lightning."""
    heavy = "('torch', 'lightning', 'numpy')"
    code = f"import sys, harmony.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    version = subprocess.run([sys.executable, "-m", "harmony", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("harmony ")


BAD_ARGUMENTS = {"summary": ["--config"], "quickstart": ["--config"]}
"""A bad argument per command (default ``--no-such-option``; these two pass unknown options to Lightning)."""

HELP_AND_BAD_ARGUMENT = """
import sys
from harmony.cli import main
command, bad = sys.argv[1], sys.argv[2:]
try:
    main([command, "--help"])
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
status = main([command, *bad])
print(status, sorted(m for m in ("torch", "lightning") if m in sys.modules))
"""


@pytest.mark.parametrize("command", list(TOOL_COMMANDS))
def test_tool_command_help_and_bad_arguments_import_no_torch(command: str) -> None:
    """`harmony <command> --help`, and a bad argument's one-line error, come before torch is imported."""
    bad = BAD_ARGUMENTS.get(command, ["--no-such-option"])
    result = subprocess.run(
        [sys.executable, "-c", HELP_AND_BAD_ARGUMENT, command, *bad], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert f"harmony {command}" in result.stdout  # the usage line
    assert result.stdout.strip().splitlines()[-1] == "2 []"
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("harmony: error: ")
