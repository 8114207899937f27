"""Rebuilding a model from a `harmony fit` checkpoint for the tool commands (harmonize, classify)."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import torch
from lightning.pytorch import LightningModule

from harmony.errors import HarmonyInputError


def read_checkpoint(checkpoint: Path, mmap: bool = False) -> dict:
    """A checkpoint's contents, unpickled safely: tensors and plain values only (``weights_only``).

    A checkpoint from someone else cannot run code when it is read: anything but weights and plain
    Python values (a pickled function, an object with a ``__reduce__``) is refused, not executed.

    Raises:
        HarmonyInputError: The file is missing, unreadable, truncated, holds other objects than weights,
            or is not a Lightning checkpoint (no ``state_dict``).
    """
    if not checkpoint.is_file():
        raise HarmonyInputError(checkpoint, "checkpoint not found")
    try:
        contents = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise HarmonyInputError(
            checkpoint,
            "not a harmony checkpoint: it holds Python objects besides weights, which harmony does not "
            "unpickle (they could run code)",
        ) from None
    except Exception as error:  # noqa: BLE001 - any unreadable file is a user error here
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HarmonyInputError(
            checkpoint, f"not a harmony checkpoint (unreadable or truncated: {first})"
        ) from None
    if not isinstance(contents, dict) or "state_dict" not in contents:
        raise HarmonyInputError(checkpoint, "not a harmony checkpoint (no state_dict)")
    return contents


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
        HarmonyInputError: The file is missing or unreadable (see :func:`read_checkpoint`), records no
            configuration, or holds a model that is not a ``base``.
    """
    # mmap: only the small hyper-parameter dict is used here; the weights are read once, below.
    header = read_checkpoint(checkpoint, mmap=True)
    class_path = header.get("hyper_parameters", {}).get("_class_path")
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
        raise HarmonyInputError(checkpoint, f"checkpoint is for {class_path}, which is not {kind}")
    model = cls.load_from_checkpoint(checkpoint, map_location=device, weights_only=True)
    return model.to(device).eval()
