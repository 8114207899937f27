"""The callbacks of every ``harmony fit``: resumability (random states, a checkpoint on preemption), grids.

:class:`~harmony.lightning_cli.HarmonyCLI` adds them to every run and finds the checkpoint
``--ckpt_path last`` means (:func:`last_checkpoint`). README, "Resume and preemption", says what a resumed
run reproduces exactly. :class:`ImageGridLogger` shows validation samples in TensorBoard.
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
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from harmony.data import types as keys
from harmony.methods.base import to_uint8
from harmony.visualization import COLUMN_LABELS, harmonization_grid

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


class ImageGridLogger(Callback):
    """Log a labelled composite | harmonized | real grid of the first validation samples to TensorBoard.

    Once per validation epoch (not during the sanity check), under the tag ``val/images``, one row per
    sample, each labelled with its name and the fMSE of the composite and of the harmonized image at the
    batch's resolution (:func:`~harmony.visualization.harmonization_grid`; the model's
    ``grid_column_labels`` name the columns). The images are those the validation step returns
    (:meth:`HarmonizationModule.validation_step <harmony.methods.base.HarmonizationModule.validation_step>`):
    the outputs the evaluator scored, so a diffusion model samples nothing more for the grid. The samples
    are the first of the first validation loader, taken from as many batches as ``num_images`` needs;
    with a ``DistributedSampler`` they are rank 0's.

    It does nothing without a ``TensorBoardLogger`` (``--trainer.logger false``, ``fast_dev_run``, another
    logger), with ``num_images: 0``, or for a model whose validation step returns no images (e.g.
    :class:`~harmony.methods.diffharmony.HarmonyClassifier`).

    Args:
        num_images: How many validation samples the grid shows (0: log nothing).
    """

    TAG = "val/images"

    def __init__(self, num_images: int = 4) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0 (got {num_images})")
        self.num_images = num_images
        self._samples: dict[str, list] = {}

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start collecting this epoch's samples."""
        self._samples = {}

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the returned images of the first samples, as ``uint8`` arrays on the CPU."""
        collected = len(self._samples.get(keys.COMPOSITE, []))
        if dataloader_idx != 0 or collected >= self.num_images or _tensorboard(trainer) is None:
            return
        if not isinstance(outputs, dict) or not {keys.COMPOSITE, "harmonized"} <= outputs.keys():
            return
        take = self.num_images - collected
        for key in (keys.COMPOSITE, "harmonized", keys.TARGET):
            if key in outputs:
                images = to_uint8(outputs[key][:take]).permute(0, 2, 3, 1).cpu().numpy()
                self._samples.setdefault(key, []).extend(images)
        if keys.MASK in outputs:
            self._samples.setdefault(keys.MASK, []).extend(outputs[keys.MASK][:take, 0].float().cpu().numpy())
        if keys.NAME in outputs:
            self._samples.setdefault(keys.NAME, []).extend(outputs[keys.NAME][:take])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Draw the grid and add it to TensorBoard at the current global step."""
        samples, self._samples = self._samples, {}
        logger = _tensorboard(trainer)
        if logger is None or not samples:
            return
        stacked = {key: np.stack(value) for key, value in samples.items() if key != keys.NAME}
        grid = harmonization_grid(
            stacked[keys.COMPOSITE],
            stacked["harmonized"],
            stacked.get(keys.TARGET),
            stacked.get(keys.MASK),
            samples.get(keys.NAME),
            getattr(pl_module, "grid_column_labels", COLUMN_LABELS),
        )
        logger.experiment.add_image(self.TAG, grid, trainer.global_step, dataformats="HWC")


def _tensorboard(trainer: Trainer) -> TensorBoardLogger | None:
    """The trainer's TensorBoard logger when a grid should be logged now, else ``None``."""
    # The sanity check runs an untrained model; the other ranks' loggers write nothing.
    if trainer.sanity_checking or not trainer.is_global_zero:
        return None
    return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)


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
