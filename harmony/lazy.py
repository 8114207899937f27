"""Lazy package exports: ``harmony.methods.X`` imports the module that defines ``X`` only when asked for.

A package's ``__init__`` that imported every class eagerly would make ``import harmony.methods.<any
submodule>`` import Lightning, diffusers and torchvision (seconds on a small machine), even for the
torch-free inference path of ``harmony harmonize``. With :func:`attach`, ``from harmony.methods import
R2R`` works as before, at the cost of that one module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def attach(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """The ``__getattr__``, ``__dir__`` and ``__all__`` of a package whose names load on first use.

    Args:
        package: The package's ``__name__``.
        exports: Each exported name and the module defining it, relative to the package (``.backbones``)
            or absolute.

    Returns:
        ``(__getattr__, __dir__, __all__)`` for the package's namespace.
    """
    names = sorted(exports)

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__, names


def import_all(package: Any) -> None:
    """Import every lazily exported name of ``package`` (e.g. so that every class is registered)."""
    for name in package.__all__:
        getattr(package, name)
