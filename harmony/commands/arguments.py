"""The argument parser of the tool commands: a bad argument is one line, like every other error."""

from __future__ import annotations

import argparse
from typing import NoReturn

from harmony.errors import HarmonyInputError


class ToolArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors raise :class:`~harmony.errors.HarmonyInputError`.

    argparse prints the usage and the message on two or more lines and exits; raising instead lets
    ``harmony`` report it as ``harmony: error: …`` on one line, exit status 2, as any other user error.
    ``--help`` still prints the full usage.
    """

    def error(self, message: str) -> NoReturn:
        """Raise the parse error (see the class docstring)."""
        raise HarmonyInputError(None, f"{self.prog}: {message} (see {self.prog} --help)")
