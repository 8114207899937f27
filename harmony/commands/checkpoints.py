"""Rebuilding a model from a `harmony fit` checkpoint for the tool commands (harmonize, classify)."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from lightning.pytorch import LightningModule

from harmony.errors import HarmonyInputError


def load_checkpoint_model(
    checkpoint: Path, base: type[LightningModule], kind: str, device: torch.device
) -> LightningModule:
    """The model a checkpoint records (its class path and configuration), with its weights, in eval mode.

    Args:
        checkpoint: A checkpoint written by ``harmony fit``.
        base: The class the recorded model must be (a subclass of).
        kind: What ``base`` is, for the message (``a harmony method``).
        device: Where the model goes.

    Raises:
        HarmonyInputError: The file is missing or unreadable, records no configuration, or holds a model
            that is not a ``base``.
    """
    if not checkpoint.is_file():
        raise HarmonyInputError(checkpoint, "checkpoint not found")
    try:
        # mmap: only the small hyper-parameter dict is read here; the weights are read once, below.
        header = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is a user error here
        raise HarmonyInputError(
            checkpoint, f"cannot read checkpoint ({type(error).__name__}: {error})"
        ) from None
    class_path = header.get("hyper_parameters", {}).get("_class_path") if isinstance(header, dict) else None
    del header
    if not isinstance(class_path, str):
        raise HarmonyInputError(
            checkpoint, "checkpoint does not record the model's configuration (write it with `harmony fit`)"
        )
    module_name, _, class_name = class_path.rpartition(".")
    # Only harmony's own modules are imported on a checkpoint's say-so.
    cls = None
    if module_name.startswith("harmony."):
        cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise HarmonyInputError(checkpoint, f"checkpoint names {class_path}, which is not {kind}")
    return cls.load_from_checkpoint(checkpoint, map_location=device).to(device).eval()
