"""``make reproduce-table1``: every row we can evaluate on the iHarmony4 test split, beside the papers.

With ``--dataset rpharmony`` the same rows are scored on an RPHarmony root beside R2R's Table 2 instead
(``table2.{md,json}``; the methods' RPHarmony-fine-tuned checkpoints are ``checkpoints/<name>_rpharmony``).

Rows: the Composite and the training-free baselines always; each method whose checkpoint is present
under ``checkpoints/`` (see checkpoints/README.md), and each authors' release imported there with
``harmony import-weights`` (``pih.ckpt``, ``diffharmony_release.ckpt``, ``diffharmony_plusplus_release.ckpt``,
``r2r_release.ckpt``). Every row goes through the shared evaluator
(``iharmony4`` protocol); the Composite is also scored under the ``bcmi`` protocol, which is what
reproduces the Composite PSNRs printed by Li et al. Writes ``table1.md`` and ``table1.json``;
``table1.md`` also has DiffHarmony++ Table 3's layout: MSE / fMSE of every row per foreground-ratio
bucket (the evaluator's ``fg_0_5``, ``fg_5_15``, ``fg_15_100`` groups, which ``table1.json`` holds too).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harmony.commands.arguments import ToolArgumentParser
from harmony.commands.paper_numbers import (
    BUCKET_PAPER_NUMBERS,
    BUCKET_PAPER_SAMPLES,
    PAPER_NUMBERS,
    RPHARMONY_PAPER_NUMBERS,
    RPHARMONY_SUBSETS,
    SUBSETS,
)
from harmony.data.io import save_json, save_text
from harmony.data.records import list_iharmony4
from harmony.errors import HarmonyInputError

if TYPE_CHECKING:
    from harmony.data import IHarmony4DataModule
    from harmony.methods import HarmonizationModule

# Lightning, the data modules, the methods and the evaluator are imported where they are used, so that
# --help and a bad argument answer at once.

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class MethodRow:
    """A trained method's row: its config, and the weights that must be present for it to appear.

    Args:
        config: The experiment config that builds the model (relative to the repository).
        checkpoint: A ``harmony fit`` checkpoint whose weights (EMA weights where the method keeps an
            EMA) are loaded into the built model; ``None`` when the config names its weights itself.
        needs: Further files or folders that must exist (weights the config loads when the test starts).
        released: The checkpoint is an import of the authors' release (``harmony import-weights``); it
            records the released variant's architecture and is rebuilt from it, not from ``config``.
    """

    config: str
    checkpoint: str | None = None
    needs: tuple[str, ...] = ()
    released: bool = False

    def fine_tuned_on_rpharmony(self) -> MethodRow | None:
        """The row with its RPHarmony-fine-tuned checkpoint (``<name>_rpharmony.ckpt`` beside the original).

        ``None`` for a row whose config names its weights itself (it has no checkpoint to swap).
        """
        if self.checkpoint is None or self.released:
            return None
        file = Path(self.checkpoint)
        return MethodRow(self.config, str(file.with_name(f"{file.stem}_rpharmony{file.suffix}")), self.needs)

    def missing(self) -> list[str]:
        """The required paths that do not exist."""
        paths = ([self.checkpoint] if self.checkpoint else []) + list(self.needs)
        return [path for path in paths if not (REPO / path).exists()]


METHOD_ROWS: dict[str, MethodRow] = {
    "SemiSupervisedParametric": MethodRow(
        "experiments/semi_supervised_parametric.yaml", "checkpoints/semi_supervised_parametric.ckpt"
    ),
    "DiffHarmony": MethodRow("experiments/diffharmony.yaml", "checkpoints/diffharmony.ckpt"),
    # DiffHarmony++ has no checkpoint of its own: its config loads a trained DiffHarmony UNet and a trained
    # Harmony-VAE from these folders (what `harmony fit` exports to <log_dir>/pretrained/).
    "DiffHarmonyPlusPlus": MethodRow(
        "experiments/diffharmony_plusplus.yaml",
        needs=("checkpoints/diffharmony/unet", "checkpoints/harmony_vae"),
    ),
    # An R2R checkpoint holds every part (stage-1 UNet, Clear-VAE, controller), so it is enough alone.
    "R2R": MethodRow("experiments/r2r.yaml", "checkpoints/r2r.ckpt"),
    "ClassifierGuidedLDM": MethodRow(
        "experiments/classifier_guided_ldm.yaml", "checkpoints/classifier_guided_ldm.ckpt"
    ),
    # The authors' releases, imported with `harmony import-weights --from <release> ... --output <file>`.
    "SemiSupervisedParametric (authors' weights)": MethodRow(
        "experiments/semi_supervised_parametric_pih_release.yaml", "checkpoints/pih.ckpt", released=True
    ),
    "DiffHarmony (authors' weights)": MethodRow(
        "experiments/diffharmony.yaml", "checkpoints/diffharmony_release.ckpt", released=True
    ),
    "DiffHarmonyPlusPlus (authors' weights)": MethodRow(
        "experiments/diffharmony_plusplus.yaml",
        "checkpoints/diffharmony_plusplus_release.ckpt",
        released=True,
    ),
    "R2R (authors' weights)": MethodRow(
        "experiments/r2r.yaml", "checkpoints/r2r_release.ckpt", released=True
    ),
}
"""Trained methods; a row appears when everything it needs is present (see checkpoints/README.md)."""


def load_method(config: Path, checkpoint: Path | None) -> HarmonizationModule:
    """Build a config's model and, given a checkpoint, load its trained weights the way Lightning would.

    The checkpoint goes through the model's ``on_load_checkpoint`` first, so a method with an EMA is
    evaluated with its EMA weights and does not reload its pretrained starting weights over them.
    """
    from harmony.commands.checkpoints import read_checkpoint
    from harmony.commands.summary import build_model

    model = build_model([str(config)], [])
    if checkpoint is not None:
        state = read_checkpoint(checkpoint)
        model.on_load_checkpoint(state)
        model.load_state_dict(state["state_dict"])
    return model  # type: ignore[return-value]


def load_imported(checkpoint: Path) -> HarmonizationModule:
    """An imported release's model, rebuilt from the architecture its checkpoint records."""
    import torch

    from harmony.commands.checkpoints import load_checkpoint_model
    from harmony.methods import HarmonizationModule

    model = load_checkpoint_model(checkpoint, HarmonizationModule, "a harmony method", torch.device("cpu"))
    return model  # type: ignore[return-value]


def evaluate(
    module: HarmonizationModule,
    root: Path,
    batch_size: int,
    num_workers: int,
    datamodule_class: type[IHarmony4DataModule] | None = None,
) -> dict:
    """Score a module on the test split with the shared evaluator (``datamodule_class``: iHarmony4's)."""
    from lightning.pytorch import Trainer

    from harmony.data import IHarmony4DataModule

    datamodule = (datamodule_class or IHarmony4DataModule)(
        root, image_size=module.inference_size, batch_size=batch_size, num_workers=num_workers, augment=False
    )
    trainer = Trainer(accelerator="auto", devices=1, logger=False, enable_checkpointing=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    return module.test_results


def score_composites(root: Path, protocol: str) -> dict:
    """Score the composite files themselves with ``harmony score`` (predictions = composites)."""
    from harmony.commands import score

    with tempfile.TemporaryDirectory() as folder:
        predictions = Path(folder) / "predictions"
        predictions.mkdir()
        for record in list_iharmony4(root, "test"):
            os.symlink(record.composite.resolve(), predictions / record.composite.name)
        output = Path(folder) / "scores.json"
        args = [
            "--data-root",
            str(root),
            "--predictions",
            str(predictions),
            "--protocol",
            protocol,
            "--output",
            str(output),
        ]
        if score.main(args) != 0:
            raise HarmonyInputError(root, f"scoring the composites under {protocol} failed")
        return json.loads(output.read_text())["results"]


def _cell(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_markdown(
    table: dict[str, dict],
    subsets: tuple[str, ...] = SUBSETS,
    paper_numbers: dict[str, dict[str, dict]] = PAPER_NUMBERS,
) -> str:
    """One line per row and source: PSNR / MSE / fMSE per subset."""
    header = "| row | source | " + " | ".join(f"{s} PSNR / MSE / fMSE" for s in subsets) + " |"
    lines = [header, "|" + "---|" * (len(subsets) + 2)]
    for row, entry in table.items():
        ours = entry["results"]
        cells = [
            f"{_cell(ours[g]['psnr'], 2)} / {_cell(ours[g]['mse'], 2)} / {_cell(ours[g]['fmse'], 2)}"
            if g in ours
            else "–"
            for g in subsets
        ]
        lines.append(f"| {row} | harmony ({entry['protocol']}) | " + " | ".join(cells) + " |")
        paper_row = row.split(" (")[0]
        for source, numbers in paper_numbers.get(paper_row, {}).items():
            if entry["protocol"] == "bcmi" and "bcmi" not in source:
                continue
            cells = [
                "{} / {} / {}".format(*(_cell(v, 2) for v in numbers[g])) if g in numbers else "–"
                for g in subsets
            ]
            lines.append(f"| {row} | {source} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_bucket_markdown(
    table: dict[str, dict],
    paper_numbers: dict[str, dict[str, dict[str, tuple[float, float]]]] = BUCKET_PAPER_NUMBERS,
) -> str:
    """DiffHarmony++ Table 3's layout: one line per row and source, MSE / fMSE per foreground bucket."""
    from harmony.metrics import FOREGROUND_BUCKETS

    buckets = [bucket for bucket, _, _ in FOREGROUND_BUCKETS]
    labels = [f"{100 * low:g} % ~ {100 * high:g} %" for _, low, high in FOREGROUND_BUCKETS]
    lines = ["| row | source | " + " | ".join(f"{label} MSE / fMSE" for label in labels) + " |"]
    lines.append("|" + "---|" * (len(buckets) + 2))
    if table:
        ours = next(iter(table.values()))["results"]
        counts = [str(ours[b]["n"]) if b in ours else "0" for b in buckets]
        lines.append("| N_samples | harmony | " + " | ".join(counts) + " |")
        paper_counts = [str(BUCKET_PAPER_SAMPLES[b]) for b in buckets]
        lines.append("| N_samples | DiffHarmony++ Tab. 3 | " + " | ".join(paper_counts) + " |")
    for row, entry in table.items():
        ours = entry["results"]
        cells = [
            f"{_cell(ours[b]['mse'], 2)} / {_cell(ours[b]['fmse'], 2)}" if b in ours else "–" for b in buckets
        ]
        lines.append(f"| {row} | harmony ({entry['protocol']}) | " + " | ".join(cells) + " |")
        for source, numbers in paper_numbers.get(row.split(" (")[0], {}).items():
            if entry["protocol"] == "bcmi" and "bcmi" not in source:
                continue
            cells = [
                "{} / {}".format(*(_cell(v, 2) for v in numbers[b])) if b in numbers else "–" for b in buckets
            ]
            lines.append(f"| {row} | {source} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Evaluate every available row and write the table."""
    parser = ToolArgumentParser(prog="reproduce-table1", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset",
        choices=("iharmony4", "rpharmony"),
        default="iharmony4",
        help="iHarmony4 beside the papers' Table 1, or RPHarmony beside R2R's Table 2",
    )
    parser.add_argument(
        "--data-root", type=Path, help="the data set root (default: data/iHarmony4, data/RPHarmony)"
    )
    parser.add_argument(
        "--output-dir", type=Path, default=Path("results"), help="where table{1,2}.{md,json} go"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="evaluation batch size")
    parser.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="data loading workers"
    )
    parser.add_argument("--rows", nargs="*", help="only these rows (default: every available row)")
    args = parser.parse_args(argv)
    from harmony.data import IHarmony4DataModule, RPHarmonyDataModule
    from harmony.methods import Composite, HistogramMatching, ReinhardLabTransfer

    rpharmony = args.dataset == "rpharmony"
    datamodule_class = RPHarmonyDataModule if rpharmony else IHarmony4DataModule
    args.data_root = args.data_root or Path(datamodule_class.default_root)
    name = "RPHarmony" if rpharmony else "iHarmony4"
    if not args.data_root.is_dir():
        raise HarmonyInputError(
            args.data_root, f"{name} not found; see data/README.md for where to get it and the layout"
        )
    list_iharmony4(args.data_root, "test")  # fails early, in one line, on a malformed root

    modules: dict[str, HarmonizationModule] = {
        "Composite": Composite(),
        "ReinhardLabTransfer": ReinhardLabTransfer(),
        "HistogramMatching": HistogramMatching(),
    }
    for row, method in METHOD_ROWS.items():
        if args.rows and row not in args.rows:
            continue
        if missing := method.missing():
            print(f"{row}: skipped (not present: {', '.join(missing)})", file=sys.stderr)
            continue
        if rpharmony:
            method = method.fine_tuned_on_rpharmony()
            if method is None:
                print(f"{row}: skipped (its config names its own weights)", file=sys.stderr)
                continue
            if missing := method.missing():
                print(f"{row}: skipped (not present: {', '.join(missing)})", file=sys.stderr)
                continue
        checkpoint = REPO / method.checkpoint if method.checkpoint else None
        if method.released and checkpoint is not None:
            modules[row] = load_imported(checkpoint)
        else:
            modules[row] = load_method(REPO / method.config, checkpoint)
    table: dict[str, dict] = {}
    for row, module in modules.items():
        if args.rows and row not in args.rows:
            continue
        print(f"evaluating {row} …", file=sys.stderr)
        table[row] = {
            "protocol": "iharmony4",
            "results": evaluate(module, args.data_root, args.batch_size, args.workers, datamodule_class),
        }
    if rpharmony:
        markdown = render_markdown(table, RPHARMONY_SUBSETS, RPHARMONY_PAPER_NUMBERS)
        save_text(args.output_dir / "table2.md", "# RPHarmony test split (256×256)\n\n" + markdown)
        save_json(args.output_dir / "table2.json", table)
        print(markdown)
        print(f"wrote {args.output_dir / 'table2.md'} and {args.output_dir / 'table2.json'}")
        return 0
    if not args.rows or "Composite" in args.rows:
        table["Composite (bcmi)"] = {"protocol": "bcmi", "results": score_composites(args.data_root, "bcmi")}

    markdown = render_markdown(table)
    markdown += "\n## Per foreground ratio (DiffHarmony++ Table 3 layout)\n\n" + render_bucket_markdown(table)
    save_text(args.output_dir / "table1.md", "# iHarmony4 test split (256×256)\n\n" + markdown)
    save_json(args.output_dir / "table1.json", table)
    print(markdown)
    print(f"wrote {args.output_dir / 'table1.md'} and {args.output_dir / 'table1.json'}")
    return 0


if __name__ == "__main__":
    from harmony.cli import run_tool

    raise SystemExit(run_tool(main, sys.argv[1:]))
