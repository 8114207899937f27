"""Semi-supervised Parametric Real-world Image Harmonization (Wang et al., CVPR 2023).

The harmonized image is ``O = t2(t1(C))`` inside the mask and the composite outside it: ``t1`` are
global RGB curves and ``t2`` a smooth multiplicative shading map, both predicted from a low-resolution
copy of the input and applied at any resolution (Sec. 3.1, Eq. 1). Training mixes a supervised stream
(λ·L1 + (1−λ)·L_G, Eq. 2) and an unsupervised stream of real composites ((1−λ)·L_G only) against a
per-pixel discriminator (Eq. 3–4) — Sec. 3.2.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from harmony.data import types as keys
from harmony.data.composites import paste_background
from harmony.data.real_composites import BACKGROUND, REAL, SUPERVISED, UNSUPERVISED
from harmony.methods.base import Batch, HarmonizationModule, save_config_hyperparameters
from harmony.methods.semi_supervised_parametric.any_resolution import (
    ParametricAdjustments,
    apply_adjustments,
    network_inputs,
)
from harmony.methods.semi_supervised_parametric.rgb_curves import apply_curves

INJECTED = (
    "curve_predictor",
    "shading_net",
    "discriminator",
    "generator_optimizer",
    "discriminator_optimizer",
    "generator_scheduler",
    "discriminator_scheduler",
)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class SemiSupervisedParametric(HarmonizationModule):
    """Parametric harmonization (global RGB curves + local shading map) with dual-stream GAN training.

    Training batches are either a plain batch (the supervised stream) or a dict
    ``{"supervised": batch, "unsupervised": batch}`` (e.g. from
    :class:`~harmony.data.real_composites.DualStreamDataModule`). With both, the streams alternate
    deterministically, one per training batch, so each gets exactly half of the steps of an epoch
    (±1); the other stream's batch of that step is not used.

    Args:
        curve_predictor: Predicts the ``B×3×K`` curves from the low-resolution stack
            ``[C, B, M]`` (7 channels) or ``[C, M]`` (4 channels); e.g.
            :class:`.CurvePredictor` over a ResNet-50.
        shading_net: Predicts the shading gain from ``[C, B, M, t1(C)]`` (10 channels) or
            ``[C, M, t1(C)]`` (7); e.g. :class:`.ShadingUNet`. ``None`` gives the
            curves-only ablation of Table 4.
        discriminator: Per-pixel real/fake logits of a 3-channel image, e.g.
            :class:`.UNetDiscriminatorSN`. ``None`` trains with the L1 loss
            alone (the paper's iHarmony4 setting; the unsupervised stream then cannot be used).
        generator_optimizer: Optimizer of the curve predictor and shading net (paper: Adam, lr 4e-5).
        discriminator_optimizer: Optimizer of the discriminator (paper: Adam, lr 4e-5).
        generator_scheduler: Learning-rate schedule of the generator, stepped once per epoch
            (paper: ×0.2 every 20 epochs).
        discriminator_scheduler: Learning-rate schedule of the discriminator, stepped once per epoch.
        low_resolution: Side length of the square copy the networks see (512 in the paper).
        use_background_input: Also feed the background image. The paper's iHarmony4 comparison passes
            only the composite and the mask. Without an explicit background in the batch it is
            ``missing_background``.
        missing_background: The background the networks see when the batch has none (iHarmony4,
            ``harmony harmonize``): ``masked_composite``, the composite with the foreground zeroed, or
            ``composite``, the composite itself. The release was trained with inpainted backgrounds and its
            ``inference.py`` takes the background photo, neither of which a composite and a mask give;
            ``composite`` at least keeps the image free of the black hole it never saw.
        shading_input: The stage-t1 image the shading net sees: ``curved``, the curves applied to the
            whole composite, or the release's ``curved_over_background``, the curved composite inside
            the mask over the background input outside it (needs ``use_background_input``).
        reconstruction_weight: λ of Eq. 2: the supervised loss is λ·L1 + (1−λ)·L_G and the
            unsupervised one (1−λ)·L_G.
        brightness_jitter: The supervised stream's composite foreground is multiplied by a random
            factor in ``[1 − j, 1 + j]`` on the fly (Sec. 3.2); 0 disables it.
        reconstruction_loss: ``l1`` (the paper's) over the whole image, or ``foreground_mse``: each
            image's mean squared error over its foreground (its fMSE), averaged over the batch — the
            evaluator's metric, which weighs a 1 % foreground as much as a 50 % one and, being a mean
            rather than a median, shrinks the change where the right one is uncertain.
        harmonious_fraction: Share of each supervised batch whose composite is replaced by its real
            image (after the jitter), so the model also learns to leave a foreground that already fits
            unchanged; 0 (the paper) disables it.
        compute_lpips: Also report LPIPS at test time.
        predictions_dir: Where ``harmony predict`` writes ``<name>.png`` files.
    """

    def __init__(
        self,
        curve_predictor: nn.Module,
        shading_net: nn.Module | None = None,
        discriminator: nn.Module | None = None,
        generator_optimizer: OptimizerCallable = torch.optim.Adam,
        discriminator_optimizer: OptimizerCallable = torch.optim.Adam,
        generator_scheduler: LRSchedulerCallable | None = None,
        discriminator_scheduler: LRSchedulerCallable | None = None,
        low_resolution: int = 512,
        use_background_input: bool = True,
        missing_background: Literal["masked_composite", "composite"] = "masked_composite",
        shading_input: Literal["curved", "curved_over_background"] = "curved",
        reconstruction_weight: float = 0.92,
        brightness_jitter: float = 0.35,
        reconstruction_loss: Literal["l1", "foreground_mse"] = "l1",
        harmonious_fraction: float = 0.0,
        compute_lpips: bool = False,
        predictions_dir: str = "outputs/predictions",
    ) -> None:
        super().__init__(
            compute_lpips=compute_lpips, predictions_dir=predictions_dir, inference_size=low_resolution
        )
        save_config_hyperparameters(self, INJECTED)
        self.automatic_optimization = False
        self.curve_predictor = curve_predictor
        self.shading_net = shading_net
        self.discriminator = discriminator
        self.generator_optimizer = generator_optimizer
        self.discriminator_optimizer = discriminator_optimizer
        self.generator_scheduler = generator_scheduler
        self.discriminator_scheduler = discriminator_scheduler
        self.low_resolution = low_resolution
        self.use_background_input = use_background_input
        if missing_background not in ("masked_composite", "composite"):
            raise ValueError(
                f"missing_background must be 'masked_composite' or 'composite', got {missing_background!r}"
            )
        self.missing_background = missing_background
        if shading_input not in ("curved", "curved_over_background"):
            raise ValueError(
                f"shading_input must be 'curved' or 'curved_over_background', got {shading_input!r}"
            )
        if shading_input == "curved_over_background" and not use_background_input:
            raise ValueError("shading_input='curved_over_background' needs use_background_input=True")
        self.shading_input = shading_input
        self.reconstruction_weight = reconstruction_weight
        self.brightness_jitter = brightness_jitter
        if reconstruction_loss not in ("l1", "foreground_mse"):
            raise ValueError(
                f"reconstruction_loss must be 'l1' or 'foreground_mse', got {reconstruction_loss!r}"
            )
        self.reconstruction_loss = reconstruction_loss
        if not 0.0 <= harmonious_fraction <= 1.0:
            raise ValueError(f"harmonious_fraction must be in [0, 1], got {harmonious_fraction}")
        self.harmonious_fraction = harmonious_fraction
        self._check_channels()

    def _check_channels(self) -> None:
        stack = 7 if self.use_background_input else 4
        for name, module, expected in (
            ("curve_predictor", self.curve_predictor, stack),
            ("shading_net", self.shading_net, stack + 3),
        ):
            found = getattr(module, "in_channels", None)
            if module is not None and found is not None and found != expected:
                raise ValueError(
                    f"{name} takes {found} input channels but "
                    f"use_background_input={self.use_background_input} gives it {expected}"
                )

    def setup(self, stage: str) -> None:
        """Load optional pretrained backbone weights when training starts (before any checkpoint restore)."""
        if stage == "fit":
            for module in self.modules():
                if module is not self and hasattr(module, "load_pretrained"):
                    module.load_pretrained()

    # --- the parametric model ----------------------------------------------------------------------
    def _network_inputs(
        self, composite: torch.Tensor, mask: torch.Tensor, background: torch.Tensor | None
    ) -> torch.Tensor:
        size = self.low_resolution
        parts = [_resize(composite, size)]
        if self.use_background_input:
            if background is None:
                background = composite if self.missing_background == "composite" else composite * (1 - mask)
            parts.append(_resize(background, size))
        parts.append(_resize(mask, size))
        return torch.cat(parts, dim=1)

    def predict_parameters(
        self, composite: torch.Tensor, mask: torch.Tensor, background: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Predict the curves and the shading gain from a low-resolution copy of the inputs.

        Args:
            composite: ``B×3×H×W`` in ``[0, 1]`` at any size.
            mask: ``B×1×H×W`` in ``[0, 1]``.
            background: ``B×3×H×W`` background image, if one is known.

        Returns:
            ``B×3×K`` curves and the ``B×1×L×L`` gain at ``low_resolution`` (``None`` without a
            shading net).
        """
        inputs = self._network_inputs(composite, mask, background)
        curves = self.curve_predictor(inputs)
        if self.shading_net is None:
            return curves, None
        curved = apply_curves(inputs[:, :3].float(), curves)
        if self.shading_input == "curved_over_background":
            curved = paste_background(curved, inputs[:, 3:6].float(), inputs[:, 6:7].float())
        return curves, self.shading_net(torch.cat([inputs, curved.to(inputs.dtype)], dim=1))

    def render(
        self, composite: torch.Tensor, mask: torch.Tensor, curves: torch.Tensor, gain: torch.Tensor | None
    ) -> torch.Tensor:
        """Apply curves and shading at the composite's resolution (Eq. 1), keeping the composite outside."""
        composite = composite.float()
        output = apply_curves(composite, curves)
        if gain is not None:
            output = output * F.interpolate(
                gain.float(), size=composite.shape[-2:], mode="bilinear", align_corners=False
            )
        return paste_background(output, composite, mask.float())

    def harmonize(self, batch: Batch) -> torch.Tensor:
        """Harmonize a batch at its own resolution (the networks see ``low_resolution``)."""
        composite, mask = batch[keys.COMPOSITE], batch[keys.MASK]
        curves, gain = self.predict_parameters(composite, mask, batch.get(BACKGROUND))
        return self.render(composite, mask, curves, gain)

    # --- any-resolution use ------------------------------------------------------------------------
    @property
    def num_knots(self) -> int:
        """Knots of the predicted curves (what a ``.cube`` export needs)."""
        return int(self.curve_predictor.num_knots)

    @property
    def has_shading_map(self) -> bool:
        """Whether the model predicts a shading map (``False`` for the curves-only ablation)."""
        return self.shading_net is not None

    @torch.no_grad()
    def estimate_batch(self, images: list[tuple[np.ndarray, np.ndarray]]) -> list[ParametricAdjustments]:
        """Predict the curves and shading maps of several images of any sizes in one network run.

        Args:
            images: ``(composite, mask)`` pairs: ``H×W×3`` ``uint8`` and ``H×W`` soft masks in ``[0, 1]``.
        """
        size = self.low_resolution
        composites, masks = network_inputs(images, size)
        curves, gains = self.predict_parameters(
            torch.from_numpy(composites).to(self.device), torch.from_numpy(masks).to(self.device)
        )
        gains = [None] * len(images) if gains is None else gains[:, 0].float().cpu().numpy()
        return [
            ParametricAdjustments(image_curves, gain)
            for image_curves, gain in zip(curves.float().cpu().numpy(), gains, strict=True)
        ]

    def estimate_adjustments(self, composite: np.ndarray, mask: np.ndarray) -> ParametricAdjustments:
        """Predict the curves and shading map of one image of any size (see :meth:`estimate_batch`).

        Args:
            composite: ``H×W×3`` ``uint8`` RGB composite.
            mask: ``H×W`` soft mask in ``[0, 1]``.
        """
        return self.estimate_batch([(composite, mask)])[0]

    apply_adjustments = staticmethod(apply_adjustments)

    @torch.no_grad()
    def harmonize_image(self, composite: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Harmonize an image of any size: networks at ``low_resolution``, curves and shading at full size."""
        return self.apply_adjustments(composite, mask, self.estimate_adjustments(composite, mask))

    # --- training -----------------------------------------------------------------------------------
    @staticmethod
    def select_stream(batch: Batch, batch_idx: int) -> tuple[str, Batch]:
        """Pick the stream of a training step: alternate when both are present (even steps supervised)."""
        if SUPERVISED in batch and UNSUPERVISED in batch:
            stream = SUPERVISED if batch_idx % 2 == 0 else UNSUPERVISED
            return stream, batch[stream]
        if SUPERVISED in batch or UNSUPERVISED in batch:
            stream = SUPERVISED if SUPERVISED in batch else UNSUPERVISED
            return stream, batch[stream]
        return SUPERVISED, batch

    def _jitter_brightness(self, batch: Batch) -> Batch:
        composite, mask = batch[keys.COMPOSITE], batch[keys.MASK]
        factor = torch.empty(composite.shape[0], 1, 1, 1, device=composite.device)
        factor.uniform_(1 - self.brightness_jitter, 1 + self.brightness_jitter)
        jittered = (composite * (1 + (factor - 1) * mask)).clamp(0, 1)
        return {**batch, keys.COMPOSITE: jittered}

    def _make_harmonious(self, batch: Batch) -> Batch:
        composite, target = batch[keys.COMPOSITE], batch[keys.TARGET]
        chosen = torch.rand(composite.shape[0], 1, 1, 1, device=composite.device) < self.harmonious_fraction
        return {**batch, keys.COMPOSITE: torch.where(chosen, target.to(composite.dtype), composite)}

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        """One generator step and, with a discriminator, one discriminator step on the chosen stream."""
        stream, data = self.select_stream(batch, batch_idx)
        supervised = stream == SUPERVISED
        if supervised and self.brightness_jitter > 0:
            data = self._jitter_brightness(data)
        if supervised and self.harmonious_fraction > 0:
            data = self._make_harmonious(data)
        if self.discriminator is None:
            if not supervised:
                raise ValueError(
                    "the unsupervised stream needs a discriminator (model.discriminator is None)"
                )
            self._generator_only_step(data)
        else:
            self._adversarial_step(data, supervised)

    def reconstruction(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The supervised loss of ``output`` against the batch's target (see ``reconstruction_loss``)."""
        target = batch[keys.TARGET].float()
        if self.reconstruction_loss == "l1":
            return F.l1_loss(output, target)
        mask = batch[keys.MASK].float()
        squared = ((output - target) ** 2 * mask).sum(dim=(1, 2, 3))
        return (squared / (3 * mask.sum(dim=(1, 2, 3))).clamp_min(1.0)).mean()

    def _generator_only_step(self, data: Batch) -> None:
        optimizer = self.optimizers()
        output = self.harmonize(data)
        loss = self.reconstruction(output, data)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.log(f"train/{self.reconstruction_loss}", loss, prog_bar=True, batch_size=output.shape[0])

    def _adversarial_step(self, data: Batch, supervised: bool) -> None:
        generator_optimizer, discriminator_optimizer = self.optimizers()
        mask = data[keys.MASK].float()
        batch_size = mask.shape[0]
        weight = self.reconstruction_weight
        with self.toggled_optimizer(generator_optimizer):
            output = self.harmonize(data)
            fake_logits = self.discriminator(output).float()
            # Eq. 4: the generator wants every pixel of its output judged real.
            adversarial = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
            loss = (1 - weight) * adversarial
            if supervised:
                reconstruction = self.reconstruction(output, data)
                loss = loss + weight * reconstruction
                self.log(
                    f"train/{self.reconstruction_loss}", reconstruction, prog_bar=True, batch_size=batch_size
                )
            generator_optimizer.zero_grad()
            self.manual_backward(loss)
            generator_optimizer.step()
        real = data[keys.TARGET] if supervised else data[REAL]
        with self.toggled_optimizer(discriminator_optimizer):
            real_logits = self.discriminator(real.float()).float()
            fake_logits = self.discriminator(output.detach()).float()
            # Eq. 3: real images are all-real; in a fake only the foreground is fake (target 1 − M).
            loss_real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            loss_fake = F.binary_cross_entropy_with_logits(fake_logits, 1 - mask)
            discriminator_loss = loss_real + loss_fake
            discriminator_optimizer.zero_grad()
            self.manual_backward(discriminator_loss)
            discriminator_optimizer.step()
        stream = SUPERVISED if supervised else UNSUPERVISED
        self.log(f"train/{stream}/g_adversarial", adversarial, batch_size=batch_size)
        self.log(f"train/{stream}/g_loss", loss, batch_size=batch_size)
        self.log("train/d_loss", discriminator_loss, prog_bar=True, batch_size=batch_size)
        self.log("train/d_real", loss_real, batch_size=batch_size)
        self.log("train/d_fake", loss_fake, batch_size=batch_size)

    def on_train_epoch_end(self) -> None:
        """Step the per-epoch learning-rate schedules (manual optimization steps them ourselves)."""
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            scheduler.step()

    def generator_parameters(self) -> list[nn.Parameter]:
        """Parameters of the curve predictor and the shading net."""
        modules = [self.curve_predictor] + ([self.shading_net] if self.shading_net is not None else [])
        return [p for module in modules for p in module.parameters()]

    def configure_optimizers(self) -> Any:
        """The generator's optimizer (and the discriminator's), each with its optional schedule."""
        optimizers = [self.generator_optimizer(self.generator_parameters())]
        factories = [self.generator_scheduler]
        if self.discriminator is not None:
            optimizers.append(self.discriminator_optimizer(self.discriminator.parameters()))
            factories.append(self.discriminator_scheduler)
        schedulers = [
            factory(opt) for factory, opt in zip(factories, optimizers, strict=True) if factory is not None
        ]
        return optimizers, schedulers
