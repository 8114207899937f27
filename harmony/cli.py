"""The ``harmony`` command: LightningCLI (fit/validate/test/predict) plus the toolkit's own commands."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from lightning.pytorch import LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI

# Imported so LightningCLI's subclass mode can resolve short class names.
import harmony.data  # noqa: E402,F401
import harmony.methods  # noqa: E402,F401
from harmony import __version__
from harmony.data import HarmonyDataModule  # noqa: E402
from harmony.errors import HarmonyInputError

TOOL_COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("harmony.commands.score", "score a folder of predictions against an iHarmony4-layout root"),
    "summary": (
        "harmony.commands.summary",
        "build a config's model with random weights and count parameters",
    ),
    "check-data": ("harmony.commands.check_data", "check a data set's files, sizes, masks and split counts"),
    "stats": ("harmony.commands.stats", "foreground-ratio counts per bucket and subset, and their CDF plot"),
    "harmonize": ("harmony.commands.harmonize", "harmonize your own image(s) at any resolution"),
    "build-rpharmony": (
        "harmony.commands.build_rpharmony",
        "make an RPHarmony-style data set from photos with masks (Random Poisson Blending)",
    ),
    "build-human-harmony": (
        "harmony.commands.build_human_harmony",
        "make a Human Harmony-style data set: people photos, inverse model, classifier selection",
    ),
    "classify": (
        "harmony.commands.classify",
        "score images with a harmony classifier: the probability each is a composite",
    ),
    "generate-composites": (
        "harmony.commands.generate_composites",
        "make K candidate composites per (real image, mask) with an inverse harmonization model",
    ),
    "import-weights": (
        "harmony.commands.import_weights",
        "turn the authors' released weights (PIH, DiffHarmony, DiffHarmony++, R2R) into a harmony checkpoint",
    ),
    "quickstart": (
        "harmony.commands.quickstart",
        "train and evaluate a small model offline on synthetic data",
    ),
}

LIGHTNING_COMMANDS = {
    "fit": "train a method: harmony fit --config experiments/<method>.yaml",
    "validate": "run validation with the shared evaluator",
    "test": "evaluate on a test split with the shared evaluator (per subset, overall, per fg-ratio bucket)",
    "predict": "write harmonized <name>.png files at the original resolution",
}


class HarmonyCLI(LightningCLI):
    """LightningCLI in subclass mode over every harmony model and DataModule.

    The model base is ``LightningModule``, not ``HarmonizationModule``, so models that harmonize nothing
    (:class:`~harmony.methods.diffharmony.HarmonyClassifier`) train and test the same way.
    """


def make_cli(args: list[str], run: bool = True) -> HarmonyCLI:
    """Build the LightningCLI every harmony entry point uses (``run=False``: instantiate only)."""
    return HarmonyCLI(
        LightningModule,
        HarmonyDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        run=run,
        args=args,
    )


def _usage() -> str:
    lines = [
        f"harmony {__version__} — image harmonization toolkit",
        "",
        "usage: harmony <command> [options]",
        "",
    ]
    width = max(map(len, [*LIGHTNING_COMMANDS, *TOOL_COMMANDS]))
    lines += [f"  {name:<{width}} {text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += [f"  {name:<{width}} {text}" for name, (_, text) in TOOL_COMMANDS.items()]
    lines += ["", "Run `harmony <command> --help` for a command's options."]
    return "\n".join(lines)


def run_tool(command: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run a tool command, turning user-input errors into one line on stderr and exit status 2."""
    try:
        return command(argv)
    except HarmonyInputError as error:
        print(f"harmony: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harmony: interrupted", file=sys.stderr)
        return 130


def main(args: ArgsType = None) -> int:
    """Entry point of ``harmony`` and ``python -m harmony``.

    Args:
        args: Command-line arguments (default: ``sys.argv[1:]``); tests pass a list.

    Returns:
        The exit status.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"harmony {__version__}")
        return 0
    if argv[0] in TOOL_COMMANDS:
        module = importlib.import_module(TOOL_COMMANDS[argv[0]][0])
        return run_tool(module.main, argv[1:])

    def lightning(arguments: list[str]) -> int:
        make_cli(arguments)
        return 0

    return run_tool(lightning, argv)
