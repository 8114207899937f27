from __future__ import annotations

import json
from pathlib import Path

from harmony.cli import main
from tests.conftest import REPO_ROOT


def test_quickstart_writes_metrics_grid_and_checkpoint(tmp_path: Path) -> None:
    output, checkpoint = tmp_path / "out", tmp_path / "quickstart.ckpt"
    # The shipped config, shrunk to one step on a tiny synthetic tree.
    overrides = [
        f"--data.init_args.root={tmp_path / 'synthetic'}",
        "--data.init_args.num_train=8",
        "--data.init_args.num_val=4",
        "--data.init_args.num_test=4",
        "--data.init_args.source_size=64",
        "--data.init_args.image_size=64",
        "--data.init_args.num_workers=0",
        "--model.init_args.low_resolution=32",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=1",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    config = str(REPO_ROOT / "experiments" / "quickstart.yaml")
    args = ["quickstart", "--config", config, "--output-dir", str(output), "--checkpoint", str(checkpoint)]
    assert main([*args, *overrides]) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics) == {"Composite", "SemiSupervisedParametric"}
    for row in metrics.values():
        assert row["results"]["all"]["n"] == 4 and row["results"]["all"]["fmse"] > 0
    assert (output / "grid.png").stat().st_size > 0 and checkpoint.stat().st_size > 0
    # The checkpoint is usable by harmony harmonize.
    from harmony.data.records import list_iharmony4

    record = list_iharmony4(tmp_path / "synthetic", "test")[0]
    harmonized = tmp_path / "harmonized.png"
    command = ["harmonize", "--checkpoint", str(checkpoint), "--composite", str(record.composite)]
    assert main([*command, "--mask", str(record.mask), "--output", str(harmonized)]) == 0
    assert harmonized.is_file()
