"""What makes ``harmony fit`` resumable: random states in checkpoints, a checkpoint on preemption.

:class:`~harmony.lightning_cli.HarmonyCLI` adds both callbacks to every run and finds the checkpoint
``--ckpt_path last`` means (:func:`last_checkpoint`). README, "Resume and preemption", says what a resumed
run reproduces exactly.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

EXIT_TERMINATED = 143
"""Exit status of a ``fit`` ended by SIGTERM or SIGUSR1 (128 + SIGTERM, the shell's convention)."""


class RandomState(Callback):
    """Save the global random states (Python, NumPy, torch, CUDA) in checkpoints; restore them on resume.

    Lightning's checkpoint holds weights, optimizer, scheduler, loop and callback states but no random
    state, so a resumed run would draw other noise, timesteps and dropout masks, and another data order:
    a ``RandomSampler`` without a generator of its own seeds itself from torch's global generator each
    epoch. Restored before the training loop starts, the states saved at the end of an epoch make the
    resumed run draw what an uninterrupted run draws.

    The states are those of the process that writes the checkpoint (rank 0) and every rank gets them
    back; ``seed_everything`` seeds all ranks alike, so that is exact as long as the ranks draw alike.
    """

    def __init__(self) -> None:
        self._fitting = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Note whether this run trains (only training restores the states)."""
        # Evaluating a checkpoint keeps the run's own seeding.
        self._fitting = stage == "fit"

    def state_dict(self) -> dict[str, Any]:
        """The current states, as tensors and plain values (checkpoints load with ``weights_only``)."""
        numpy_state = np.random.get_state(legacy=False)
        return {
            "python": random.getstate(),
            "numpy": {
                "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                "pos": int(numpy_state["state"]["pos"]),
                "has_gauss": int(numpy_state["has_gauss"]),
                "gauss": float(numpy_state["gauss"]),
            },
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Put the saved states back when training resumes."""
        if not self._fitting:
            return
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        numpy_state = state_dict["numpy"]
        np.random.set_state(
            {
                "bit_generator": "MT19937",
                "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
                "has_gauss": numpy_state["has_gauss"],
                "gauss": numpy_state["gauss"],
            }
        )
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"][: torch.cuda.device_count()])


class PreemptionCheckpoint(Callback):
    """On SIGTERM or SIGUSR1 during ``fit``: save ``last.ckpt``, say where in one line, exit 143.

    Lightning notes a SIGTERM and raises ``SIGTERMException`` once the current training (or validation)
    batch is done; by itself that exits with status 0 and keeps nothing newer than the last end-of-epoch
    checkpoint. This callback then writes ``last.ckpt`` in the first ``ModelCheckpoint``'s folder, where
    ``--ckpt_path last`` looks, prints that path and how to resume on stderr, and makes the exit status
    143. Nothing is saved during the sanity check, under ``fast_dev_run`` or with checkpointing off.

    SIGUSR1 is handled as SIGTERM unless something else handles it: under SLURM, Lightning's
    ``SLURMEnvironment(auto_requeue=True)`` answers it by saving ``hpc_ckpt_<n>.ckpt`` and requeueing.
    """

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Handle SIGUSR1 as SIGTERM, unless a handler is installed already."""
        # Lightning installs its handlers just before training and puts the previous ones back when fit
        # ends, so this sees (and leaves alone) its SLURM requeue handler, and is undone with it.
        usr1 = getattr(signal, "SIGUSR1", None)
        if usr1 is None or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(usr1) == signal.SIG_DFL:
            signal.signal(usr1, _send_sigterm)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """After a SIGTERM: save, report and set the exit status."""
        if not isinstance(exception, SIGTERMException):
            return
        # SIGTERMException is a SystemExit; Lightning raises it again after this hook.
        exception.code = EXIT_TERMINATED
        callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        if trainer.sanity_checking or trainer.fast_dev_run or not callbacks:
            if trainer.is_global_zero:
                print(
                    "harmony: terminated: nothing saved (sanity check, fast_dev_run or checkpointing off)",
                    file=sys.stderr,
                )
            return
        checkpoint = callbacks[0]
        path = os.path.join(checkpoint.dirpath, checkpoint.CHECKPOINT_NAME_LAST + checkpoint.FILE_EXTENSION)
        trainer.save_checkpoint(path, weights_only=False)
        if trainer.is_global_zero:
            print(
                f"harmony: terminated at epoch {trainer.current_epoch}, step {trainer.global_step}: saved "
                f"{path}; to resume, run the same command with --ckpt_path last",
                file=sys.stderr,
            )


def _send_sigterm(signum: int, frame: FrameType | None) -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def checkpoint_folder(callback: ModelCheckpoint, trainer: Trainer) -> Path:
    """The folder ``callback`` writes to, as ``ModelCheckpoint`` resolves it when the run starts.

    Its ``dirpath`` if set, else ``<save_dir>/<name>/<version>/checkpoints`` of the first logger, else
    ``<default_root_dir>/checkpoints``.
    """
    if callback.dirpath is not None:
        return Path(callback.dirpath)
    if not trainer.loggers:
        return Path(trainer.default_root_dir, "checkpoints")
    logger = trainer.loggers[0]
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
    return Path(save_dir, str(logger.name), version, "checkpoints")


def last_checkpoint(trainer: Trainer) -> tuple[Path | None, list[Path]]:
    """What ``--ckpt_path last`` resumes from: the newest checkpoint the last run left.

    The candidates are each ``ModelCheckpoint``'s ``last*.ckpt`` (the end-of-epoch checkpoint and the
    one :class:`PreemptionCheckpoint` writes) and the ``hpc_ckpt_<n>.ckpt`` Lightning's SLURM requeue
    writes in ``default_root_dir``.

    Returns:
        The newest candidate (``None`` if there is none), and the folders searched.
    """
    callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    folders = [checkpoint_folder(callback, trainer) for callback in callbacks]
    candidates = [path for folder in folders for path in folder.glob("last*.ckpt")]
    candidates += Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt")
    newest = max(candidates, key=lambda path: path.stat().st_mtime, default=None)
    return newest, folders
