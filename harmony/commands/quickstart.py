"""``harmony quickstart``: train a small SemiSupervisedParametric on synthetic data, offline, and score it.

Trains the model described by ``experiments/quickstart.yaml`` (the paper's class with smaller injected
networks) on the SyntheticHarmony data on the CPU, evaluates it and the unharmonized Composite on the
synthetic test split with the shared evaluator, and writes ``metrics.json``, a labelled picture
grid (composite | harmonized | real, each row with its fMSE) and the checkpoint.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harmony.commands.arguments import ToolArgumentParser
from harmony.data import types as keys
from harmony.data.io import atomic_path, save_json, save_rgb
from harmony.errors import HarmonyInputError
from harmony.visualization import harmonization_grid

if TYPE_CHECKING:
    import torch

    from harmony.methods import HarmonizationModule

# torch, Lightning and the methods are imported where they are used, so that --help and a bad argument
# answer at once.

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "experiments" / "quickstart.yaml"


def picture_grid(model: HarmonizationModule, batch: dict, count: int = 6) -> np.ndarray:
    """The labelled composite | harmonized | real grid of the first ``count`` samples of a batch.

    One row per sample, labelled with its name and the fMSE of the composite and of the harmonized
    image against the real one at the batch's resolution
    (:func:`~harmony.visualization.harmonization_grid`).

    Args:
        model: The model, on the batch's device.
        batch: A test batch with ground truths.
        count: How many samples (rows) to show.

    Returns:
        The ``H×W×3`` ``uint8`` grid.
    """
    import torch

    from harmony.methods.base import to_uint8

    batch = {k: v[:count] for k, v in batch.items()}
    with torch.no_grad():
        harmonized = model.harmonize(batch).float().clamp(0, 1)

    def images(tensor: torch.Tensor) -> np.ndarray:
        return to_uint8(tensor).permute(0, 2, 3, 1).cpu().numpy()

    return harmonization_grid(
        images(batch[keys.COMPOSITE]),
        images(harmonized),
        images(batch[keys.TARGET]),
        batch[keys.MASK][:, 0].cpu().numpy(),
        batch.get(keys.NAME),
    )


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate and report; returns the exit status."""
    parser = ToolArgumentParser(prog="harmony quickstart", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the training config")
    parser.add_argument(
        "--output-dir", type=Path, default=Path("outputs/quickstart"), help="metrics and pictures"
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=Path("checkpoints/quickstart.ckpt"), help="where the model goes"
    )
    parser.add_argument(
        "overrides", nargs="*", help="extra LightningCLI arguments, e.g. --trainer.max_epochs=2"
    )
    args, unknown = parser.parse_known_args(argv)
    if not args.config.is_file():
        raise HarmonyInputError(args.config, "config file not found")

    import torch
    from lightning.pytorch import Trainer

    from harmony.lightning_cli import make_cli
    from harmony.methods import Composite

    cli = make_cli(["--config", str(args.config), *args.overrides, *unknown], run=False)
    model, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    # One compute thread per core left over by the loader workers: oversubscribed OpenMP threads make a
    # 2-core machine an order of magnitude slower.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - datamodule.num_workers))
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    training_seconds = time.perf_counter() - started
    with atomic_path(args.checkpoint) as temporary:
        trainer.save_checkpoint(temporary)

    rows: dict[str, dict] = {}
    for row, module in (("Composite", Composite()), (type(model).__name__, model)):
        evaluator = Trainer(
            accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
        )
        evaluator.test(module, datamodule=datamodule, verbose=False)
        rows[row] = {"results": module.test_results}

    args.output_dir.mkdir(parents=True, exist_ok=True)
    save_json(args.output_dir / "metrics.json", rows)
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    model.eval()
    save_rgb(args.output_dir / "grid.png", picture_grid(model.cpu(), batch))

    print("\nSynthetic test split, all images (iharmony4 protocol, 256x256):")
    print(f"  {'row':<26} {'MSE':>8} {'PSNR':>7} {'fMSE':>8} {'SSIM':>7}")
    for row, entry in rows.items():
        overall = entry["results"]["all"]
        figures = (
            f"{overall['mse']:>8.2f} {overall['psnr']:>7.2f} {overall['fmse']:>8.2f} {overall['ssim']:>7.4f}"
        )
        print(f"  {row:<26} {figures}")
    ratio = rows[type(model).__name__]["results"]["all"]["fmse"] / rows["Composite"]["results"]["all"]["fmse"]
    print(f"training took {training_seconds / 60:.1f} min; fMSE ratio (model / Composite) = {ratio:.3f}")
    print(f"wrote {args.output_dir / 'metrics.json'}, {args.output_dir / 'grid.png'} and {args.checkpoint}")
    log_dir = trainer.log_dir
    if log_dir and Path(log_dir, "config.yaml").is_file():
        shutil.copy(Path(log_dir, "config.yaml"), args.output_dir / "config.yaml")
    return 0
