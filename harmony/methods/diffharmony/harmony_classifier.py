"""DiffHarmony++'s harmony classifier (Sec. 4.2 and 5.2): is an image a composite or a real photograph?

The paper trains it on all iHarmony4 training data and uses it to build the Human Harmony data set: of
the K candidate composites the inverse-harmonization model generates for each real image, the one with
the highest probability of being a composite is kept. It is "pre-trained ResNet50 [...], taking the final
2048-dimensional features after pooling for linear probing" with "a binary classification head".

Every training, validation and test batch of the shared DataModules gives both classes: its composites
(label 1) and its real images (label 0). Inputs are resized to 256 px (bilinear, antialiased) and
normalised with the ImageNet mean and deviation, as the official candidate-selection script does.

Not in the paper, off by default: when the classifier selects among generated candidates, each
candidate's foreground mask is known, and ``mask_input`` (the mask as a 4th input channel) and
``mask_statistics`` (Lab colour statistics across the mask's edge, beside the pooled feature) let it use
the mask. Trained from scratch on SyntheticHarmony (the slow test), the image-only classifier does not
learn the task (test AUROC 0.55) and the mask-aware one does (0.90).

This is not a harmonization method (it harmonizes nothing), so it is a plain ``LightningModule``; use it
with ``harmony fit/test`` and score images with ``harmony classify``.
"""

from __future__ import annotations

from typing import Literal

import kornia
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC
from torchvision.models import ResNet, ResNet50_Weights, resnet50

from harmony.data import types as keys
from harmony.methods.base import Batch, save_config_hyperparameters

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_resnet50_backbone(
    weights: Literal["imagenet", "random"] = "imagenet", in_channels: int = 3
) -> ResNet:
    """The torchvision ResNet-50 without its classification layer: images → pooled 2048-d features.

    The network is built with random weights; ``imagenet`` records ``ResNet50_Weights.IMAGENET1K_V2`` as
    its ``pretrained_weights``, which :class:`HarmonyClassifier` loads when ``fit`` starts, so building a
    model never downloads anything.

    Args:
        weights: ``imagenet`` (the paper's pre-trained ResNet-50) or ``random``.
        in_channels: Input channels of the first convolution: 3 (RGB, the paper), or 4 for
            ``HarmonyClassifier(mask_input=True)``. The ImageNet weights of the channels beyond RGB are
            zeros, so the loaded network starts out as the pre-trained one.
    """
    backbone = resnet50(weights=None)
    if in_channels != 3:
        conv = backbone.conv1
        backbone.conv1 = nn.Conv2d(
            in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False
        )
    backbone.fc = nn.Identity()
    backbone.pretrained_weights = ResNet50_Weights.IMAGENET1K_V2 if weights == "imagenet" else None
    return backbone


def build_convnet_backbone(width: int = 16, depth: int = 4, in_channels: int = 3) -> nn.Sequential:
    """A small convolutional network trained from scratch: images → pooled ``width·2^(depth−1)`` features.

    For tests and CPU experiments, where no pre-trained network is at hand. Each stage is a stride-2
    3×3 convolution, batch norm and ReLU, doubling the channels; the last is average-pooled.

    Args:
        width: Channels of the first stage.
        depth: Number of stages.
        in_channels: Input channels: 3 (RGB), or 4 for ``HarmonyClassifier(mask_input=True)``.
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for stage in range(depth):
        out = width * 2**stage
        layers += [
            nn.Conv2d(channels, out, 3, stride=2, padding=1),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        ]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


MASK_STATISTICS_RINGS = 3
"""One-pixel rings on each side of the mask's edge that :func:`mask_colour_statistics` compares."""

MASK_STATISTICS = 3 * MASK_STATISTICS_RINGS + 6
"""Number of values :func:`mask_colour_statistics` gives per image."""


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # An empty region (no ring around a mask covering the image) gives 0, not NaN.
    return (values * weights).sum((2, 3)) / weights.sum((2, 3)).clamp_min(1.0)


def mask_colour_statistics(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """How much the foreground's colours break from the background's, in CIELAB (``B×15``).

    A composite's foreground was recoloured on its own, so its colours jump across the mask's edge
    where a real image's continue. Per Lab channel: the absolute difference of the mean colour of each
    of :data:`MASK_STATISTICS_RINGS` one-pixel rings inside the edge and the matching ring outside it
    (9 values), the absolute difference of the foreground's and background's mean (3) and the log
    ratio of their standard deviations (3). Lab values are divided by 100 (L spans 0–100).

    Args:
        images: ``B×3×H×W`` images in ``[0, 1]``.
        masks: ``B×1×H×W`` foreground masks in ``[0, 1]`` (binarised at 0.5).
    """
    lab = kornia.color.rgb_to_lab(images.clamp(0, 1)) / 100
    foreground = (masks >= 0.5).to(lab)
    background = 1 - foreground
    statistics = []
    inner, outer = foreground, foreground
    for _ in range(MASK_STATISTICS_RINGS):
        # 3x3 erosion and dilation peel the next one-pixel ring off each side of the edge.
        eroded = -F.max_pool2d(-inner, 3, stride=1, padding=1)
        dilated = F.max_pool2d(outer, 3, stride=1, padding=1)
        inside, outside = inner - eroded, dilated - outer
        statistics.append((_masked_mean(lab, inside) - _masked_mean(lab, outside)).abs())
        inner, outer = eroded, dilated
    mean_fg, mean_bg = _masked_mean(lab, foreground), _masked_mean(lab, background)
    var_fg = _masked_mean((lab - mean_fg[..., None, None]) ** 2, foreground)
    var_bg = _masked_mean((lab - mean_bg[..., None, None]) ** 2, background)
    statistics.append((mean_fg - mean_bg).abs())
    # The 1e-4 (a deviation of 1 Lab unit) keeps flat regions from giving huge ratios.
    statistics.append(0.5 * (torch.log(var_fg + 1e-4) - torch.log(var_bg + 1e-4)))
    return torch.cat(statistics, dim=1)


class HarmonyClassifier(LightningModule):
    """The harmony classifier: the probability that an image is a composite (1) rather than real (0).

    A backbone turns the normalised image into one feature vector (feature maps are average-pooled) and
    a linear layer gives one logit, trained with binary cross-entropy. The official script's head is
    ``Linear(2048 → 2)`` with a softmax whose index 1 is "unharmonious"; one logit through a sigmoid is
    the same model with one degree of freedom fewer.

    A backbone with a ``pretrained_weights`` attribute (a torchvision ``WeightsEnum``, as
    :func:`build_resnet50_backbone` sets) gets those weights when ``fit`` starts, unless the model came
    from a checkpoint; when they cannot be downloaded, a warning says so and training goes on from random
    weights.

    Validation and test report ``accuracy`` (threshold 0.5) and ``auroc`` over both classes.

    The paper's classifier sees the image only. Candidate selection knows each candidate's mask, though,
    and the two mask options below (off by default) let the classifier look at the foreground's edge,
    where a composite's colours break; a composite and its real image share one mask, so the mask itself
    tells them apart no better than chance. With either option every call needs the masks
    (``forward(images, masks)``), and ``harmony classify`` needs ``--masks``.

    Args:
        backbone: Images (ImageNet-normalised) → ``B×F`` features or ``B×F×h×w`` maps; default
            :func:`build_resnet50_backbone` (ImageNet weights).
        optimizer: Optimizer of the trained parameters; default AdamW, lr 1e-4 (neither the paper nor the
            code gives the classifier's training settings).
        train_backbone: Also train the backbone; ``False`` is the paper's linear probe (the backbone is
            frozen and kept in eval mode, so its batch-norm statistics stay the pre-trained ones).
        image_size: Side length the images are resized to (256, as the official script).
        mask_input: Also give the backbone the foreground mask, as a 4th input channel (±1); the
            backbone must take 4 channels (``in_channels=4`` of :func:`build_resnet50_backbone` or
            :func:`build_convnet_backbone`; without a backbone the default ResNet-50 gets them).
            Not in the paper.
        mask_statistics: Concatenate :func:`mask_colour_statistics` (batch-normalised) to the pooled
            feature before the probe. Not in the paper.
    """

    def __init__(
        self,
        backbone: nn.Module | None = None,
        optimizer: OptimizerCallable | None = None,
        train_backbone: bool = False,
        image_size: int = 256,
        mask_input: bool = False,
        mask_statistics: bool = False,
    ) -> None:
        super().__init__()
        save_config_hyperparameters(self, ("backbone", "optimizer"))
        self.mask_input = mask_input
        self.mask_statistics = mask_statistics
        in_channels = 4 if mask_input else 3
        self.backbone = build_resnet50_backbone(in_channels=in_channels) if backbone is None else backbone
        self.backbone.requires_grad_(train_backbone)
        self.optimizer = optimizer
        self.train_backbone = train_backbone
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # Batch norm puts the statistics on one scale whatever their units, so the probe's learning
        # rate suits them as it suits the backbone's features.
        self.statistics_norm = nn.BatchNorm1d(MASK_STATISTICS) if mask_statistics else None
        width = self._feature_width(in_channels) + (MASK_STATISTICS if mask_statistics else 0)
        self.probe = nn.Linear(width, 1)
        self.val_accuracy, self.val_auroc = BinaryAccuracy(), BinaryAUROC()
        self.test_accuracy, self.test_auroc = BinaryAccuracy(), BinaryAUROC()
        self.test_results: dict[str, float] = {}
        self._weights_ready = False
        # Lightning keeps the train/eval modes it is handed: a frozen backbone starts in eval mode.
        self.train()

    @torch.no_grad()
    def _feature_width(self, in_channels: int) -> int:
        # Read from one forward pass, so any backbone works; eval mode leaves its batch-norm stats alone.
        training = self.backbone.training
        self.backbone.eval()
        image = torch.zeros(1, in_channels, self.image_size, self.image_size)
        try:
            width = self._pooled(self.backbone(image)).shape[1]
        except RuntimeError as error:
            raise ValueError(
                f"HarmonyClassifier: the backbone does not take {in_channels}-channel inputs "
                f"({'RGB and mask' if self.mask_input else 'RGB'}); build it with in_channels={in_channels} "
                f"({type(error).__name__}: {error})"
            ) from error
        self.backbone.train(training)
        return width

    # --- model ------------------------------------------------------------------------------------
    @staticmethod
    def _pooled(features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=(2, 3)) if features.ndim == 4 else features.flatten(1)

    def _resized(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.shape[-2:] == (self.image_size, self.image_size):
            return tensor
        return F.interpolate(tensor, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)

    def features(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """The probe's input (``B×F``) for ``[0, 1]`` images of any size.

        Pooled backbone features, and with ``mask_statistics`` the normalised
        :func:`mask_colour_statistics` after them.

        Args:
            images: ``B×3×H×W`` images in ``[0, 1]``.
            masks: ``B×1×H×W`` foreground masks in ``[0, 1]``; required with ``mask_input`` or
                ``mask_statistics``, else ignored.

        Raises:
            ValueError: The model takes masks and none were given.
        """
        images = self._resized(images)
        inputs = (images - self.mean) / self.std
        if not self.takes_masks:
            return self._pooled(self.backbone(inputs))
        if masks is None:
            options = " and ".join(name for name in ("mask_input", "mask_statistics") if getattr(self, name))
            raise ValueError(f"HarmonyClassifier({options}) needs the foreground masks: pass masks")
        masks = self._resized(masks.to(inputs))
        if self.mask_input:
            # ±1, on the scale of the normalised colour channels.
            inputs = torch.cat([inputs, 2 * masks - 1], dim=1)
        features = self._pooled(self.backbone(inputs))
        if self.mask_statistics:
            statistics = self.statistics_norm(mask_colour_statistics(images, masks))
            features = torch.cat([features, statistics], dim=1)
        return features

    @property
    def takes_masks(self) -> bool:
        """Whether every call needs the foreground masks (``mask_input`` or ``mask_statistics``)."""
        return self.mask_input or self.mask_statistics

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Composite logits (``B``) of ``B×3×H×W`` images in ``[0, 1]`` (masks: see :meth:`features`)."""
        return self.probe(self.features(images, masks)).squeeze(1)

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """The probability (``B``) that each ``[0, 1]`` image is a composite (masks: see :meth:`features`)."""
        masks = None if masks is None else masks.to(self.device)
        return torch.sigmoid(self(images.to(self.device), masks))

    @staticmethod
    def labelled_images(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch's composites (label 1) followed by its real images (label 0), with their masks.

        Returns:
            ``2B×3×H×W`` images, ``2B`` float labels and ``2B×1×H×W`` masks (a composite and its real
            image share one mask).
        """
        composite, real, mask = batch[keys.COMPOSITE], batch[keys.TARGET], batch[keys.MASK]
        labels = torch.cat([composite.new_ones(len(composite)), real.new_zeros(len(real))])
        return torch.cat([composite, real]), labels, torch.cat([mask, mask])

    def train(self, mode: bool = True) -> HarmonyClassifier:
        """Set train/eval mode; a frozen backbone stays in eval mode (linear probe)."""
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()
        return self

    # --- weights ----------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        """Load the backbone's pre-trained weights, unless the model came from a checkpoint."""
        if self._weights_ready:
            return
        self._weights_ready = True
        weights = getattr(self.backbone, "pretrained_weights", None)
        if weights is None:
            return
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as error:  # noqa: BLE001 - offline or a broken download: train from random weights
            rank_zero_warn(
                f"HarmonyClassifier: cannot load {weights} ({type(error).__name__}: {error}); "
                "the backbone keeps its random weights"
            )
            return
        # The backbone's own classification layer was replaced by the probe.
        state = {name: value for name, value in state.items() if not name.startswith("fc.")}
        own = self.backbone.state_dict()
        for name, value in state.items():
            extra = own[name].shape[1] - value.shape[1] if name in own and value.ndim == 4 else 0
            if extra > 0:
                # A first convolution widened for the mask: zero weights for it, so the network starts
                # out computing exactly the pre-trained features.
                state[name] = torch.cat([value, value.new_zeros(value.shape[0], extra, *value.shape[2:])], 1)
        self.backbone.load_state_dict(state)
        rank_zero_info(f"HarmonyClassifier: backbone weights {weights}")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Weights from a checkpoint are never overwritten by the pre-trained ones."""
        self._weights_ready = True

    # --- steps ------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Binary cross-entropy over the batch's composites and real images."""
        images, labels, masks = self.labelled_images(batch)
        logits = self(images, masks)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        accuracy = ((logits > 0).float() == labels).float().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        self.log("train/accuracy", accuracy, batch_size=len(labels))
        return loss

    def _update(self, batch: Batch, accuracy: BinaryAccuracy, auroc: BinaryAUROC) -> None:
        images, labels, masks = self.labelled_images(batch)
        probabilities = torch.sigmoid(self(images, masks))
        accuracy.update(probabilities, labels.long())
        auroc.update(probabilities, labels.long())

    def _compute(self, stage: str, accuracy: BinaryAccuracy, auroc: BinaryAUROC) -> dict[str, float]:
        results = {"accuracy": float(accuracy.compute()), "auroc": float(auroc.compute())}
        accuracy.reset()
        auroc.reset()
        for metric, value in results.items():
            self.log(f"{stage}/{metric}", value, sync_dist=False)
        return results

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Accumulate validation accuracy and AUROC."""
        self._update(batch, self.val_accuracy, self.val_auroc)

    def on_validation_epoch_end(self) -> None:
        """Log ``val/accuracy`` and ``val/auroc``."""
        self._compute("val", self.val_accuracy, self.val_auroc)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """Accumulate test accuracy and AUROC."""
        self._update(batch, self.test_accuracy, self.test_auroc)

    def on_test_epoch_end(self) -> None:
        """Log ``test/accuracy`` and ``test/auroc`` and print them."""
        self.test_results = self._compute("test", self.test_accuracy, self.test_auroc)
        rank_zero_info(
            "HarmonyClassifier test: "
            + ", ".join(f"{metric} {value:.4f}" for metric, value in self.test_results.items())
        )

    def predict_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """The probability that each composite of the batch is a composite (``B``)."""
        return torch.sigmoid(self(batch[keys.COMPOSITE], batch[keys.MASK]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The injected optimizer (default AdamW, lr 1e-4) over the trained parameters."""
        parameters = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer is None:
            return torch.optim.AdamW(parameters, lr=1e-4)
        return self.optimizer(parameters)
