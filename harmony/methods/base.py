"""The base every harmonization method (and baseline) derives from.

A method implements :meth:`HarmonizationModule.harmonize` (and, if it trains, ``training_step`` and
``configure_optimizers``). Validation, test, prediction, the evaluator and full-resolution use are shared
here, so every method is scored by the same code.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image

from harmony.data import types as keys
from harmony.data.composites import blend
from harmony.data.io import read_mask, read_rgb, save_json, save_rgb, to_chw_tensor
from harmony.metrics import HarmonizationEvaluator, format_results_table, results_to_json
from harmony.postprocess import ColorTransfer
from harmony.visualization import COLUMN_LABELS

Batch = dict[str, Any]

# The evaluator's results are already those of every process (it gathers per-image values before it
# aggregates), so each process logs the same numbers. Reducing them with "max" leaves them bit for bit
# (a mean of identical values can round) and keeps Lightning from warning, once per metric, that
# epoch-level values are not synchronised.
_ALREADY_GLOBAL: dict[str, Any] = {"sync_dist": True, "reduce_fx": "max"}


def save_config_hyperparameters(module: LightningModule, injected: tuple[str, ...]) -> None:
    """Save the hyper-parameters that let ``load_from_checkpoint`` rebuild ``module``.

    Built by LightningCLI, the hyper-parameters are the configuration itself (``class_path``/``init_args``
    of every injected part), which is what rebuilds the model. Built in Python, injected objects are
    not configuration and are left out: such a checkpoint restores weights into a model you build.
    """
    # LightningCLI publishes the config through this context variable while it instantiates the model.
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    from_config = _given_hyperparameters.get() is not None
    module.save_hyperparameters(
        ignore=None if from_config else list(injected), frame=inspect.currentframe().f_back
    )


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Quantise ``[0, 1]`` images to ``uint8`` the way an 8-bit file stores them (round half up)."""
    return (images.detach().float().clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8)


def resize_uint8_batch(images: torch.Tensor, size: int, resample: int) -> torch.Tensor:
    """Resize a ``uint8`` ``B×3×H×W`` batch to ``size×size`` with PIL, exactly as files are resized."""
    if images.shape[-2:] == (size, size):
        return images
    arrays = images.permute(0, 2, 3, 1).cpu().numpy()
    resized = [np.asarray(Image.fromarray(a).resize((size, size), resample)) for a in arrays]
    return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).to(images.device)


def blend_full_resolution(prediction: np.ndarray, composite: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Resize a ``uint8`` prediction to the composite's size and blend it in with the soft mask.

    Pixels whose mask is exactly 0 keep the composite's value bit for bit.

    Args:
        prediction: ``h×w×3`` ``uint8`` output of a method at its working resolution.
        composite: ``H×W×3`` ``uint8`` original composite.
        mask: ``H×W`` soft mask in ``[0, 1]``.
    """
    height, width = composite.shape[:2]
    if prediction.shape[:2] != (height, width):
        prediction = np.asarray(Image.fromarray(prediction).resize((width, height), Image.BILINEAR))
    return np.where(mask[..., None] > 0, blend(prediction, composite, mask), composite)


class HarmonizationModule(LightningModule, ABC):
    """Base LightningModule of every harmonization method in harmony.

    Subclasses implement :meth:`harmonize`. The base scores ``validate``/``test`` through
    :class:`~harmony.metrics.HarmonizationEvaluator` (the default ``iharmony4`` protocol) and writes
    ``predict`` outputs as ``<name>.png`` at the composite's original resolution.

    Attributes:
        output_postprocess: A post-process of every output, measured on its own, e.g. Li et al. 2023's
            colour transfer (:class:`~harmony.postprocess.ColorTransfer`; set by ``harmony harmonize
            --color-transfer`` or :class:`~harmony.postprocess.ColorTransferCallback`). ``None``: none.
            It is applied by :meth:`postprocess_output`: by ``validate``/``test`` at the batch's
            resolution, by ``predict`` and ``harmony harmonize`` (:meth:`postprocess_image`) at the
            composite file's resolution, after the method's own full-resolution step (resizing back,
            or the training-free methods' full-resolution transform), so the lightness a colour transfer
            takes from the composite keeps the original's detail. :meth:`harmonize` and
            :meth:`harmonize_image` return the method's own output.
        grid_column_labels: What :class:`~harmony.callbacks.ImageGridLogger` calls the columns of the
            validation step's ``composite``, ``harmonized`` and ``target`` (a class attribute).

    Args:
        compute_lpips: Also report LPIPS at test time (needs the LPIPS/AlexNet weights; when they are
            missing the report says so instead of scoring).
        predictions_dir: Where ``harmony predict`` writes ``<name>.png`` files.
        inference_size: Side length the method works at when used on a user's image of any size
            (``harmony harmonize``); by default the output is resized back and pasted at full
            resolution (a method may instead estimate at this size and apply at full resolution).
    """

    grid_column_labels: tuple[str, ...] = COLUMN_LABELS

    def __init__(
        self,
        compute_lpips: bool = False,
        predictions_dir: str = "outputs/predictions",
        inference_size: int = 256,
    ) -> None:
        super().__init__()
        self.predictions_dir = Path(predictions_dir)
        self.inference_size = inference_size
        self.val_evaluator = HarmonizationEvaluator(protocol="iharmony4")
        self.test_evaluator = HarmonizationEvaluator(protocol="iharmony4", compute_lpips=compute_lpips)
        self.test_results: dict[str, dict[str, float]] = {}
        self.output_postprocess: ColorTransfer | None = None

    @abstractmethod
    def harmonize(self, batch: Batch) -> torch.Tensor:
        """Harmonize a batch.

        Args:
            batch: A batch in the format of :mod:`harmony.data.types` (``composite`` and ``mask`` at
                the batch's working resolution, images in ``[0, 1]``).

        Returns:
            ``B×3×H×W`` images in ``[0, 1]`` at the batch's resolution.
        """

    def postprocess_output(
        self, output: torch.Tensor, composite: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The outputs after :attr:`output_postprocess` (the outputs themselves when it is ``None``).

        Args:
            output: ``B×3×H×W`` harmonized images in ``[0, 1]``.
            composite: ``B×3×H×W`` composites they were made from.
            mask: ``B×1×H×W`` soft masks.
        """
        if self.output_postprocess is None:
            return output
        return self.output_postprocess(output, composite, mask)

    @torch.no_grad()
    def postprocess_image(self, output: np.ndarray, composite: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """:meth:`postprocess_output` of one full-resolution image.

        Args:
            output: ``H×W×3`` ``uint8`` harmonized image (e.g. from :meth:`harmonize_image`).
            composite: ``H×W×3`` ``uint8`` composite.
            mask: ``H×W`` soft mask in ``[0, 1]``.

        Returns:
            The post-processed ``H×W×3`` ``uint8`` image (``output`` itself without a post-process).
        """
        if self.output_postprocess is None:
            return output
        images = [
            to_chw_tensor(image)[None].to(self.device).float().div(255) for image in (output, composite)
        ]
        soft = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None].to(self.device)
        return to_uint8(self.postprocess_output(*images, soft)[0]).permute(1, 2, 0).cpu().numpy()

    # --- evaluation -------------------------------------------------------------------------------
    def _evaluate(self, batch: Batch, evaluator: HarmonizationEvaluator) -> torch.Tensor:
        prediction = self.harmonize(batch).float().clamp(0, 1)
        prediction = self.postprocess_output(prediction, batch[keys.COMPOSITE], batch[keys.MASK])
        eval_target = batch[keys.EVAL_TARGET]
        size = eval_target.shape[-1]
        prediction_eval = resize_uint8_batch(to_uint8(prediction), size, evaluator.protocol.resample)
        evaluator.update(
            prediction_eval,
            eval_target,
            batch[keys.EVAL_MASK],
            batch[keys.EVAL_COMPOSITE],
            batch[keys.SUBSET],
        )
        return prediction

    def validation_step(self, batch: Batch, batch_idx: int) -> Batch:
        """Score a validation batch with the shared evaluator.

        Returns:
            The batch's ``composite``, ``mask``, ``target`` (when it has one) and ``name`` (when it has
            one) with the ``harmonized`` output the evaluator scored, as the step saw them: what
            :class:`~harmony.callbacks.ImageGridLogger` draws, without harmonizing again.
        """
        prediction = self._evaluate(batch, self.val_evaluator)
        shown = {
            key: batch[key] for key in (keys.COMPOSITE, keys.MASK, keys.TARGET, keys.NAME) if key in batch
        }
        return {**shown, "harmonized": prediction}

    def on_validation_epoch_end(self) -> None:
        """Log ``val/{mse,psnr,fmse}`` over the whole validation set."""
        overall = self.val_evaluator.compute()["all"]
        self.val_evaluator.reset()
        for metric in ("mse", "psnr", "fmse"):
            self.log(f"val/{metric}", float(overall[metric]), **_ALREADY_GLOBAL)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """Score a test batch with the shared evaluator."""
        self._evaluate(batch, self.test_evaluator)

    def on_test_epoch_end(self) -> None:
        """Log every group's metrics, print the results table and write ``test_metrics.json``.

        Under DDP the evaluator gathers every process's per-image values, so each process holds the
        results of the whole test set in :attr:`test_results`; only the global-zero process prints them
        and writes the file.
        """
        self.test_results = self.test_evaluator.compute()
        self.test_evaluator.reset()
        for group, metrics in self.test_results.items():
            for metric, value in metrics.items():
                self.log(f"test/{group}/{metric}", float(value), **_ALREADY_GLOBAL)
        # Without a logger, log_dir falls back to the working directory: write nothing there. Every process
        # asks for it, because under DDP it is a broadcast from rank 0 that all processes must join.
        log_dir = self.trainer.log_dir if self.trainer.logger is not None else None
        if self.trainer.is_global_zero:
            rank_zero_info(format_results_table(self.test_results, title=type(self).__name__))
            if log_dir is not None:
                payload = results_to_json(self.test_evaluator.protocol, self.test_results)
                save_json(Path(log_dir) / "test_metrics.json", payload)

    # --- prediction -------------------------------------------------------------------------------
    def predict_step(self, batch: Batch, batch_idx: int) -> list[Path]:
        """Harmonize a batch and write each result as ``<name>.png`` at its original resolution.

        With an :attr:`output_postprocess`, it is applied to each full-resolution result, with the
        original composite and mask files.
        """
        written = []
        outputs = self.predict_original_resolution(batch)
        files = zip(batch[keys.COMPOSITE_PATH], batch[keys.MASK_PATH], strict=True)
        for name, output, (composite_path, mask_path) in zip(batch[keys.NAME], outputs, files, strict=True):
            if self.output_postprocess is not None:
                output = self.postprocess_image(output, read_rgb(composite_path), read_mask(mask_path))
            path = self.predictions_dir / f"{name}.png"
            save_rgb(path, output)
            written.append(path)
        return written

    def predict_original_resolution(self, batch: Batch) -> Iterator[np.ndarray]:
        """Each image of a prediction batch harmonized at its composite file's original resolution.

        By default the method runs on the batch (:meth:`harmonize`, at the batch's resolution) and each
        output is resized to its composite's size and blended in with the soft mask. A method that can
        work on the full-resolution file itself overrides this.

        Args:
            batch: A prediction batch (with ``composite_path`` and ``mask_path``).

        Yields:
            One ``H×W×3`` ``uint8`` image per batch item, in order.
        """
        prediction = self.harmonize(batch).float().clamp(0, 1)
        for index, (composite_path, mask_path) in enumerate(
            zip(batch[keys.COMPOSITE_PATH], batch[keys.MASK_PATH], strict=True)
        ):
            yield self._to_original_resolution(prediction[index], composite_path, mask_path)

    @staticmethod
    def _to_original_resolution(prediction: torch.Tensor, composite_path: str, mask_path: str) -> np.ndarray:
        image = to_uint8(prediction).permute(1, 2, 0).cpu().numpy()
        return blend_full_resolution(image, read_rgb(composite_path), read_mask(mask_path))

    # --- any-resolution use -----------------------------------------------------------------------
    def working_batch(self, composite: np.ndarray, mask: np.ndarray) -> Batch:
        """One image brought to ``inference_size`` as a batch of one, the way :meth:`harmonize_image` runs it.

        The composite is resized with PIL bilinear, the mask quantised to 8 bits, resized nearest and
        thresholded at 0.5, as the data sets do with files.

        Args:
            composite: ``H×W×3`` ``uint8`` RGB composite.
            mask: ``H×W`` soft mask in ``[0, 1]`` (1 = foreground).

        Returns:
            ``composite`` (``1×3×S×S`` in ``[0, 1]``) and ``mask`` (``1×1×S×S`` in ``{0, 1}``) on the
            module's device.
        """
        size = self.inference_size
        small = np.asarray(Image.fromarray(composite).resize((size, size), Image.BILINEAR))
        small_mask = np.asarray(
            Image.fromarray((mask * 255 + 0.5).astype(np.uint8)).resize((size, size), Image.NEAREST)
        )
        return {
            keys.COMPOSITE: torch.from_numpy(small.copy())
            .permute(2, 0, 1)[None]
            .float()
            .div(255)
            .to(self.device),
            keys.MASK: torch.from_numpy((small_mask >= 128).astype(np.float32))[None, None].to(self.device),
        }

    @torch.no_grad()
    def harmonize_image(self, composite: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Harmonize one image of any size.

        The method runs at ``inference_size`` (:meth:`working_batch`); its output is resized back to the
        image's size and blended into the composite with the (soft) mask, so the background stays
        bit-identical.

        Args:
            composite: ``H×W×3`` ``uint8`` RGB composite.
            mask: ``H×W`` soft mask in ``[0, 1]`` (1 = foreground).

        Returns:
            The harmonized ``H×W×3`` ``uint8`` image.
        """
        prediction = self.harmonize(self.working_batch(composite, mask)).float().clamp(0, 1)[0]
        return blend_full_resolution(to_uint8(prediction).permute(1, 2, 0).cpu().numpy(), composite, mask)
