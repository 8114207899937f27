"""The LightningCLI behind ``harmony fit``/``validate``/``test``/``predict`` (see :mod:`harmony.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

import harmony.data
import harmony.methods
from harmony.callbacks import ImageGridLogger, PreemptionCheckpoint, RandomState, last_checkpoint
from harmony.data import HarmonyDataModule
from harmony.errors import HarmonyInputError
from harmony.lazy import import_all

# Every class imported, so LightningCLI's subclass mode can resolve short class names.
import_all(harmony.data)
import_all(harmony.methods)


class HarmonyCLI(LightningCLI):
    """LightningCLI in subclass mode over every harmony model and DataModule.

    The model base is ``LightningModule``, not ``HarmonizationModule``, so models that harmonize nothing
    (:class:`~harmony.methods.diffharmony.HarmonyClassifier`) train and test the same way.

    ``fit`` is resumable (README, "Resume and preemption"): the default ``ModelCheckpoint`` keeps
    ``last.ckpt``, Lightning's default logger writes to one folder per experiment instead of a new
    ``version_<n>`` per run, and ``--ckpt_path last`` fails when there is nothing to resume from.
    Validation epochs log a labelled grid of the first samples to that logger
    (:class:`~harmony.callbacks.ImageGridLogger`).
    """

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with a ``last.ckpt`` ``ModelCheckpoint`` and an ``ImageGridLogger`` by default.

        The ``ModelCheckpoint`` writes ``last.ckpt`` at each epoch end. It stands in for Lightning's
        default one (``epoch=<e>-step=<s>.ckpt``) when checkpointing is on and the config's
        ``trainer.callbacks`` hold no ``ModelCheckpoint``; a config's own is kept as it is. Likewise the
        :class:`~harmony.callbacks.ImageGridLogger` (4 validation samples in TensorBoard) is added unless
        the config has one, so a config's own sets the count, or turns the grids off with ``num_images: 0``.
        """
        trainer = self.config_init.get(str(self.subcommand), self.config_init).trainer
        callbacks = trainer.callbacks if isinstance(trainer.callbacks, list) else [trainer.callbacks]
        callbacks = [callback for callback in callbacks if callback is not None]
        defaults: list[Callback] = []
        if trainer.enable_checkpointing is not False and not any(
            isinstance(callback, ModelCheckpoint) for callback in callbacks
        ):
            # Without a monitor the newest checkpoint is the only one kept, so naming it "last" gives
            # `--ckpt_path last` its file; save_last=True would write the same weights a second time.
            defaults.append(ModelCheckpoint(filename="last", enable_version_counter=False))
        # Not in trainer_defaults: LightningCLI appends those to a config's callbacks, which could then
        # neither replace nor remove it.
        if not any(isinstance(callback, ImageGridLogger) for callback in callbacks):
            defaults.append(ImageGridLogger())
        if defaults:
            kwargs.setdefault("callbacks", [*callbacks, *defaults])
        return super().instantiate_trainer(**kwargs)

    def before_instantiate_classes(self) -> None:
        """``fit`` with the default logger logs to ``lightning_logs/<config names>`` under the root dir."""
        if self.subcommand != "fit" or self.config.fit.trainer.logger not in (None, True):
            return
        trainer = self.config.fit.trainer
        # The same experiment resumes in the same folder; another default_root_dir is another run.
        name = "+".join(Path(str(config)).stem for config in self.config.fit.get("config") or []) or "run"
        trainer.logger = Namespace(
            class_path="lightning.pytorch.loggers.TensorBoardLogger",
            init_args=Namespace(
                save_dir=trainer.default_root_dir or ".", name="lightning_logs", version=name
            ),
        )

    def before_fit(self) -> None:
        """Resolve ``--ckpt_path last`` to the newest checkpoint; refuse to start from scratch without one."""
        if self.config_init.fit.get("ckpt_path") != "last":
            return
        path, folders = last_checkpoint(self.trainer)
        if path is None:
            searched = folders[0] if folders else self.trainer.default_root_dir
            raise HarmonyInputError(searched, "no checkpoint to resume from (--ckpt_path last)")
        self.config_init.fit.ckpt_path = str(path)


def make_cli(args: list[str] | None, run: bool = True) -> HarmonyCLI:
    """Build the LightningCLI every harmony entry point uses (``run=False``: instantiate only).

    Args:
        args: The arguments (``None``: ``sys.argv``).
        run: Run the subcommand (``False``: only instantiate the classes).
    """
    return HarmonyCLI(
        LightningModule,
        HarmonyDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [RandomState(), PreemptionCheckpoint()]},
        # Parse errors raise instead of printing usage: run_tool reports them in one line.
        parser_kwargs={"exit_on_error": False},
        seed_everything_default=0,
        run=run,
        args=args,
    )
