"""The LightningModule base of every latent-diffusion method (DiffHarmony and its stages, R2R, Li et al.).

:class:`LatentDiffusionModule` holds what those methods share, so a paper writes only what is new in it:

* **weights** — pretrained weights are read when the first fit/validate/test/predict starts
  (:meth:`~LatentDiffusionModule.load_pretrained`), never in ``__init__`` (building a model needs no
  network), and not at all when the weights came from a checkpoint;
* **EMA** — an exponential moving average of the trained parameters, used for validation, test and
  prediction, saved in checkpoints under ``"ema"``;
* **export** — at the end of ``fit`` the trained parts (EMA weights) are written in the diffusers
  folder format to ``<log_dir>/pretrained/`` (:meth:`~LatentDiffusionModule.export_pretrained`);
* **generation** — :meth:`~LatentDiffusionModule.generate` resizes the input to ``inference_size``,
  then runs three steps a paper overrides one at a time: :meth:`~LatentDiffusionModule.condition` →
  :meth:`~LatentDiffusionModule.sample` → :meth:`~LatentDiffusionModule.decode`, resizes back and
  pastes the composite's background; ``predict`` writes ``num_samples`` seeds per input.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from harmony.data import types as keys
from harmony.data.composites import paste_background
from harmony.data.io import read_mask, read_rgb, save_rgb
from harmony.errors import HarmonyInputError
from harmony.methods.base import Batch, HarmonizationModule
from harmony.nn.latent import Generators, resize_for_inference, seeded_generators


@dataclass
class GenerationCondition:
    """What generation is conditioned on, at the working resolution (``inference_size``).

    Args:
        composite: ``B×3×h×w`` composite in ``[0, 1]``.
        mask: ``B×1×h×w`` binary foreground mask.
        composite_latents: The composite's scaled latents, for methods that encode it.
        latent_mask: The mask on the latent grid, for methods that denoise latents.
        extras: Method-specific tensors at the working resolution (e.g. the real image a reconstruction
            needs, a ControlNet hint, stage-1 outputs).
    """

    composite: torch.Tensor
    mask: torch.Tensor
    composite_latents: torch.Tensor | None = None
    latent_mask: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class LatentDiffusionModule(HarmonizationModule):
    """Base of the latent-diffusion methods: late pretrained loading, EMA, export, staged generation.

    Subclasses implement :meth:`condition`, :meth:`sample` and :meth:`decode` (and, to train,
    ``training_step``/``configure_optimizers``); they override :meth:`load_pretrained`,
    :meth:`ema_named_parameters` and :meth:`export_pretrained` for their parts.

    With ``ema_decay`` set, an EMA of :meth:`ema_named_parameters` is updated after every optimizer
    step, swapped in for validation, test and prediction, and saved in checkpoints; whenever a checkpoint
    is loaded for evaluation (``validate``/``test``/``predict``/``load_from_checkpoint``) its EMA weights
    are the ones loaded, and a run resumed with ``fit`` continues its EMA.

    Args:
        ema_decay: Maximum decay of the EMA of the trained parameters; ``None`` disables it.
        num_samples: Outputs per input for ``predict`` (seeds ``seed``, ``seed + 1``, …; written as
            ``<name>_<k>.png`` when more than one). Evaluation always scores the first.
        seed: Seed of the generation noise (per image, so results do not depend on the batch).
        compute_lpips: Also report LPIPS at test time.
        predictions_dir: Where ``predict`` writes its images.
        inference_size: Square working resolution of generation; inputs of any size are resized to it
            and back, and the composite's background is pasted at the input's resolution.
    """

    def __init__(
        self,
        ema_decay: float | None = None,
        num_samples: int = 1,
        seed: int = 0,
        compute_lpips: bool = False,
        predictions_dir: str = "outputs/predictions",
        inference_size: int = 256,
    ) -> None:
        super().__init__(
            compute_lpips=compute_lpips, predictions_dir=predictions_dir, inference_size=inference_size
        )
        if num_samples < 1:
            raise HarmonyInputError(None, f"num_samples must be at least 1, got {num_samples}")
        self.ema_decay = ema_decay
        self.num_samples = num_samples
        self.seed = seed
        self._weights_ready = False
        self._ema: EMAModel | None = None
        self._pending_ema_state: dict | None = None

    def check_inference_size(self, grid: int, networks: str) -> None:
        """Refuse an ``inference_size`` the networks cannot work at.

        Args:
            grid: The networks' total downsampling (VAE × UNet), which the working size must be a
                multiple of.
            networks: What they are, for the message (``this UNet/VAE``).

        Raises:
            HarmonyInputError: ``inference_size`` is not a multiple of ``grid``.
        """
        if self.inference_size % grid:
            raise HarmonyInputError(
                None, f"inference_size {self.inference_size} must be a multiple of {grid} for {networks}"
            )

    # --- weights ----------------------------------------------------------------------------------
    def load_pretrained(self) -> None:
        """Load the configured pretrained weights (called once, when a run starts)."""

    def _ensure_weights(self) -> None:
        if not self._weights_ready:
            self.load_pretrained()
            self._weights_ready = True

    def on_fit_start(self) -> None:
        """Load pretrained weights if needed, then start the EMA (restoring it when resuming)."""
        self._ensure_weights()
        if self.ema_decay is None:
            return
        self._ema = EMAModel([p for _, p in self.ema_named_parameters()], decay=self.ema_decay)
        if self._pending_ema_state is not None:
            self._ema.load_state_dict(self._pending_ema_state)
            self._ema.to(self.device)
            self._pending_ema_state = None

    def on_validation_start(self) -> None:
        """Load pretrained weights if needed."""
        self._ensure_weights()

    def on_test_start(self) -> None:
        """Load pretrained weights if needed; test with the EMA weights."""
        self._ensure_weights()
        self._swap_ema(True)

    def on_test_end(self) -> None:
        """Put the live weights back."""
        self._swap_ema(False)

    def on_predict_start(self) -> None:
        """Load pretrained weights if needed; predict with the EMA weights."""
        self._ensure_weights()
        self._swap_ema(True)

    def on_predict_end(self) -> None:
        """Put the live weights back."""
        self._swap_ema(False)

    # --- EMA --------------------------------------------------------------------------------------
    def ema_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The averaged parameters, named as in this module's ``state_dict``."""
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]

    def optimizer_step(self, *args: object, **kwargs: object) -> None:
        """Step the optimizer, then the EMA."""
        super().optimizer_step(*args, **kwargs)
        if self._ema is not None:
            self._ema.step([p for _, p in self.ema_named_parameters()])

    def _swap_ema(self, use_ema: bool) -> None:
        if self._ema is None:
            return
        parameters = [p for _, p in self.ema_named_parameters()]
        if use_ema:
            self._ema.store(parameters)
            self._ema.copy_to(parameters)
        else:
            self._ema.restore(parameters)

    @contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Temporarily put the EMA weights in place (no-op without an EMA)."""
        self._swap_ema(True)
        try:
            yield
        finally:
            self._swap_ema(False)

    def on_validation_epoch_start(self) -> None:
        """Validate with the EMA weights (swapped back before any checkpoint is written)."""
        self._swap_ema(True)

    def on_validation_epoch_end(self) -> None:
        """Put the live weights back, then log the metrics."""
        self._swap_ema(False)
        super().on_validation_epoch_end()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Save the EMA next to the live weights, also when the EMA weights are in place."""
        if self._ema is None:
            return
        checkpoint["ema"] = self._ema.state_dict()
        if self._ema.temp_stored_params is not None:
            # Written during validation (a SIGTERM stops it mid-way): the live weights are the stored ones.
            names = [name for name, _ in self.ema_named_parameters()]
            checkpoint["state_dict"].update(zip(names, self._ema.temp_stored_params, strict=True))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Keep the EMA to resume training, or load the EMA weights for evaluation."""
        self._weights_ready = True
        state = checkpoint.get("ema")
        if state is None:
            return
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            self._pending_ema_state = state
            return
        names = [name for name, _ in self.ema_named_parameters()]
        if len(names) != len(state["shadow_params"]):
            raise HarmonyInputError(
                None, "the checkpoint's EMA does not match this model's trainable parameters"
            )
        checkpoint["state_dict"].update(zip(names, state["shadow_params"], strict=True))

    # --- export -----------------------------------------------------------------------------------
    def export_pretrained(self, directory: str | Path) -> None:
        """Write the trained parts in the diffusers folder format under ``directory``."""

    def on_fit_end(self) -> None:
        """Export the trained parts (EMA weights) to ``<log_dir>/pretrained`` (not under ``fast_dev_run``)."""
        log_dir = self.trainer.log_dir
        if log_dir is None or self.trainer.fast_dev_run or not self.trainer.is_global_zero:
            return
        with self.ema_weights():
            self.export_pretrained(Path(log_dir) / "pretrained")
        rank_zero_info(f"{type(self).__name__}: trained weights exported to {Path(log_dir) / 'pretrained'}")

    # --- generation -------------------------------------------------------------------------------
    def working_condition(self, batch: Batch) -> GenerationCondition:
        """The batch's composite and mask at ``inference_size`` (mask re-thresholded)."""
        composite, mask = resize_for_inference(
            batch[keys.COMPOSITE].float(), batch[keys.MASK].float(), self.inference_size
        )
        return GenerationCondition(composite=composite, mask=mask)

    @abstractmethod
    def condition(self, batch: Batch, generators: Generators) -> GenerationCondition:
        """Step 1: everything generation is conditioned on, at the working resolution.

        Args:
            batch: The input batch at its own resolution (:meth:`working_condition` resizes it).
            generators: One seeded generator per image (e.g. for the VAE's posterior sample); the same
                ones then seed :meth:`sample`.
        """

    @abstractmethod
    def sample(self, condition: GenerationCondition, generators: Generators) -> torch.Tensor:
        """Step 2: the latents (or other representation) :meth:`decode` turns into images."""

    @abstractmethod
    def decode(self, latents: torch.Tensor, condition: GenerationCondition) -> torch.Tensor:
        """Step 3: ``B×3×h×w`` images in ``[0, 1]`` at the working resolution."""

    @torch.no_grad()
    def generate(self, batch: Batch, seed: int) -> torch.Tensor:
        """Harmonize a batch with one seed: ``B×3×H×W`` in ``[0, 1]`` at the batch's resolution.

        Runs :meth:`condition` → :meth:`sample` → :meth:`decode` at ``inference_size``, resizes the
        result back (bilinear, antialiased) and pastes the composite's background.
        """
        composite, mask = batch[keys.COMPOSITE], batch[keys.MASK]
        generators = seeded_generators(seed, composite.shape[0])
        condition = self.condition(batch, generators)
        images = self.decode(self.sample(condition, generators), condition).float()
        if images.shape[-2:] != composite.shape[-2:]:
            images = F.interpolate(
                images, size=composite.shape[-2:], mode="bilinear", align_corners=False, antialias=True
            )
        return paste_background(images.clamp(0, 1), composite, mask)

    def harmonize(self, batch: Batch) -> torch.Tensor:
        """Harmonize with the first seed."""
        return self.generate(batch, self.seed)

    def predict_step(self, batch: Batch, batch_idx: int) -> list[Path]:
        """Write ``<name>.png``, or ``<name>_<k>.png`` for each of ``num_samples`` seeds."""
        if self.num_samples == 1:
            return super().predict_step(batch, batch_idx)
        written = []
        for k in range(self.num_samples):
            prediction = self.generate(batch, self.seed + k)
            for index, name in enumerate(batch[keys.NAME]):
                composite_path, mask_path = batch[keys.COMPOSITE_PATH][index], batch[keys.MASK_PATH][index]
                output = self._to_original_resolution(prediction[index], composite_path, mask_path)
                if self.output_postprocess is not None:
                    output = self.postprocess_image(output, read_rgb(composite_path), read_mask(mask_path))
                path = self.predictions_dir / f"{name}_{k}.png"
                save_rgb(path, output)
                written.append(path)
        return written
