"""The one exception type users see as a clean one-line error."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class HarmonyInputError(ValueError):
    """A problem with user-provided input (a file, a folder, a configuration value).

    The command-line entry point prints ``harmony: error: <message>`` and exits non-zero, without a
    traceback. The message always names the file it concerns.

    Args:
        path: The file or folder the problem concerns (``None`` when there is none).
        problem: What is wrong, in a few words.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)

    def __reduce__(self) -> tuple[type, tuple[Path | None, str]]:
        # Errors raised in DataLoader or pool workers must survive pickling back to the parent.
        return (type(self), (self.path, self.problem))


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM during a tool command.

    A ``BaseException``, like ``KeyboardInterrupt``, so ``except Exception`` blocks do not swallow it and
    every ``finally`` on the way out runs: temporary files are removed and nothing half-written is left.
    """


def load_strictly(module: Any, state: dict, where: str | Path | None, problem: str) -> None:
    """``module.load_state_dict(state, strict=True)``, a mismatch raised as one :class:`HarmonyInputError`.

    Args:
        module: A ``torch.nn.Module``.
        state: The weights to load.
        where: The file or folder they come from (named in the message).
        problem: What a mismatch means, e.g. ``weights do not fit the VAE``; the first missing,
            unexpected or misshapen key follows it in brackets.

    Raises:
        HarmonyInputError: Some key is missing or unexpected, or some shape differs.
    """
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        # torch's first line only names the module; the second is the first mismatch.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise HarmonyInputError(where, f"{problem} ({lines[min(1, len(lines) - 1)]})") from None
