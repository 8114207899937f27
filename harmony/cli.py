"""The ``harmony`` command: LightningCLI (fit/validate/test/predict) plus the toolkit's own commands.

This module imports only the standard library: each command imports what it needs when it runs (the
Lightning ones :mod:`harmony.lightning_cli`), so ``harmony --version`` and ``--help`` start at once.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from harmony import __version__
from harmony.errors import HarmonyInputError, Terminated

TOOL_COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("harmony.commands.score", "score a folder of predictions against an iHarmony4-layout root"),
    "summary": (
        "harmony.commands.summary",
        "build a config's model with random weights and count parameters",
    ),
    "check-data": ("harmony.commands.check_data", "check a data set's files, sizes, masks and split counts"),
    "stats": ("harmony.commands.stats", "foreground-ratio counts per bucket and subset, and their CDF plot"),
    "harmonize": ("harmony.commands.harmonize", "harmonize your own image(s) at any resolution"),
    "export": ("harmony.commands.export", "export a parametric checkpoint's networks to ONNX"),
    "demo": ("harmony.commands.demo", "a local web page: upload a composite and mask, compare, download"),
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


def __getattr__(name: str) -> object:
    # The Lightning CLI lives apart so that `harmony --version`, `--help` and the tool commands do not
    # import Lightning; `from harmony.cli import make_cli, HarmonyCLI` keeps working.
    if name in ("HarmonyCLI", "make_cli"):
        from harmony import lightning_cli

        return getattr(lightning_cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


DEBUG_VARIABLE = "HARMONY_DEBUG"
"""Set (to anything but ``0``), or ``harmony --debug <command>``: errors show their traceback."""


def debugging() -> bool:
    """Whether errors should keep their traceback (:data:`DEBUG_VARIABLE`)."""
    return os.environ.get(DEBUG_VARIABLE, "0") not in ("", "0")


def _argument_problem(error: argparse.ArgumentError, argv: list[str]) -> str:
    """A configuration/argument error (jsonargparse's is many lines) as one line, naming the config."""
    noise = (
        "Given value",
        "Subtypes:",
        "Errors:",
        "Does not validate against any",
        "Expected a <class 'NoneType'>",
    )
    parts = [line.strip().removeprefix("- ") for line in str(error).splitlines()]
    message = " ".join(part for part in parts if part and not part.startswith(noise))
    configs = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("--config", "-c")]
    return f"{', '.join(configs)}: {message}" if configs else message


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`~harmony.errors.Terminated` while a tool command runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_tool(command: Callable[[list[str]], int], argv: list[str], handle_sigterm: bool = True) -> int:
    """Run a command, turning every error into one line on stderr and a non-zero exit status.

    User errors (:class:`~harmony.errors.HarmonyInputError`, bad arguments or configs, files that cannot
    be written) exit 2; an interruption 130 (SIGINT) or 143 (SIGTERM), after the temporary files are
    removed; anything else is an internal error, exit 1. With :data:`DEBUG_VARIABLE` set the traceback
    is shown instead.

    Args:
        command: The command's ``main``.
        argv: Its arguments.
        handle_sigterm: Turn SIGTERM into a clean exit (``False`` where Lightning handles it, in ``fit``).
    """
    try:
        with _sigterm_raises() if handle_sigterm else contextlib.nullcontext():
            return command(argv)
    except HarmonyInputError as error:
        if debugging():
            raise
        print(f"harmony: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harmony: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("harmony: terminated", file=sys.stderr)
        return 143
    except argparse.ArgumentError as error:
        if debugging():
            raise
        print(f"harmony: error: {_argument_problem(error, argv)}", file=sys.stderr)
        return 2
    except OSError as error:
        if debugging():
            raise
        problem = error.strerror or str(error)
        if error.errno in (errno.ENOTDIR, errno.EEXIST) and error.filename and os.path.isfile(error.filename):
            problem = "is a file, so nothing can be written under it"
        where = f"{error.filename}: " if error.filename else ""
        print(f"harmony: error: {where}{problem}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - the last resort: one line, the traceback on request
        if debugging():
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(
            f"harmony: internal error: {type(error).__name__}: {first} "
            f"(run with --debug or {DEBUG_VARIABLE}=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


def main(args: list[str] | None = None) -> int:
    """Entry point of ``harmony`` and ``python -m harmony``.

    Args:
        args: Command-line arguments (default: ``sys.argv[1:]``); tests pass a list.

    Returns:
        The exit status.
    """
    argv = list(sys.argv[1:] if args is None else args)
    for stream in (sys.stdout, sys.stderr):
        # File names need not be UTF-8 (Linux): print them escaped rather than fail on them.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if argv and argv[0] == "--debug":
        os.environ[DEBUG_VARIABLE] = "1"
        argv = argv[1:]
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
        # LightningCLI reads sys.argv: Lightning's `ddp` launcher starts the other ranks with it, so it
        # must hold these arguments (and not `--debug`, or what a test passes to main()).
        shell_arguments, sys.argv[1:] = sys.argv[1:], arguments
        from harmony.lightning_cli import make_cli

        try:
            make_cli(None)
        finally:
            sys.argv[1:] = shell_arguments
        return 0

    return run_tool(lightning, argv, handle_sigterm=False)
