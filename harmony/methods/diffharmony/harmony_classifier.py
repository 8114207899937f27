"""DiffHarmony++'s harmony classifier (Sec. 4.2 and 5.2): is an image a composite or a real photograph?

The paper trains it on all iHarmony4 training data and uses it to build the Human Harmony data set: of
the K candidate composites the inverse-harmonization model generates for each real image, the one with
the highest probability of being a composite is kept. It is "pre-trained ResNet50 [...], taking the final
2048-dimensional features after pooling for linear probing" with "a binary classification head".

Every training, validation and test batch of the shared DataModules gives both classes: its composites
(label 1) and its real images (label 0). Inputs are resized to 256 px (bilinear, antialiased) and
normalised with the ImageNet mean and deviation, as the official candidate-selection script does.

This is not a harmonization method (it harmonizes nothing), so it is a plain ``LightningModule``; use it
with ``harmony fit/test`` and score images with ``harmony classify``.
"""

from __future__ import annotations

from typing import Literal

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


def build_resnet50_backbone(weights: Literal["imagenet", "random"] = "imagenet") -> ResNet:
    """The torchvision ResNet-50 without its classification layer: images → pooled 2048-d features.

    The network is built with random weights; ``imagenet`` records ``ResNet50_Weights.IMAGENET1K_V2`` as
    its ``pretrained_weights``, which :class:`HarmonyClassifier` loads when ``fit`` starts, so building a
    model never downloads anything.

    Args:
        weights: ``imagenet`` (the paper's pre-trained ResNet-50) or ``random``.
    """
    backbone = resnet50(weights=None)
    backbone.fc = nn.Identity()
    backbone.pretrained_weights = ResNet50_Weights.IMAGENET1K_V2 if weights == "imagenet" else None
    return backbone


def build_convnet_backbone(width: int = 16, depth: int = 4) -> nn.Sequential:
    """A small convolutional network trained from scratch: images → pooled ``width·2^(depth−1)`` features.

    For tests and CPU experiments, where no pre-trained network is at hand. Each stage is a stride-2
    3×3 convolution, batch norm and ReLU, doubling the channels; the last is average-pooled.

    Args:
        width: Channels of the first stage.
        depth: Number of stages.
    """
    layers: list[nn.Module] = []
    channels = 3
    for stage in range(depth):
        out = width * 2**stage
        layers += [
            nn.Conv2d(channels, out, 3, stride=2, padding=1),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        ]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


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

    Args:
        backbone: Images (ImageNet-normalised) → ``B×F`` features or ``B×F×h×w`` maps; default
            :func:`build_resnet50_backbone` (ImageNet weights).
        optimizer: Optimizer of the trained parameters; default AdamW, lr 1e-4 (neither the paper nor the
            code gives the classifier's training settings).
        train_backbone: Also train the backbone; ``False`` is the paper's linear probe (the backbone is
            frozen and kept in eval mode, so its batch-norm statistics stay the pre-trained ones).
        image_size: Side length the images are resized to (256, as the official script).
    """

    def __init__(
        self,
        backbone: nn.Module | None = None,
        optimizer: OptimizerCallable | None = None,
        train_backbone: bool = False,
        image_size: int = 256,
    ) -> None:
        super().__init__()
        save_config_hyperparameters(self, ("backbone", "optimizer"))
        self.backbone = build_resnet50_backbone() if backbone is None else backbone
        self.backbone.requires_grad_(train_backbone)
        self.optimizer = optimizer
        self.train_backbone = train_backbone
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.probe = nn.Linear(self._feature_width(), 1)
        self.val_accuracy, self.val_auroc = BinaryAccuracy(), BinaryAUROC()
        self.test_accuracy, self.test_auroc = BinaryAccuracy(), BinaryAUROC()
        self.test_results: dict[str, float] = {}
        self._weights_ready = False
        # Lightning keeps the train/eval modes it is handed: a frozen backbone starts in eval mode.
        self.train()

    @torch.no_grad()
    def _feature_width(self) -> int:
        # Read from one forward pass, so any backbone works; eval mode leaves its batch-norm stats alone.
        training = self.backbone.training
        self.backbone.eval()
        width = self.features(torch.zeros(1, 3, self.image_size, self.image_size)).shape[1]
        self.backbone.train(training)
        return width

    # --- model ------------------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features of ``[0, 1]`` images of any size (``B×F``)."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear", antialias=True
            )
        features = self.backbone((images - self.mean) / self.std)
        return features.mean(dim=(2, 3)) if features.ndim == 4 else features.flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Composite logits (``B``) of ``B×3×H×W`` images in ``[0, 1]``."""
        return self.probe(self.features(images)).squeeze(1)

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """The probability (``B``) that each ``[0, 1]`` image is a composite."""
        return torch.sigmoid(self(images.to(self.device)))

    @staticmethod
    def labelled_images(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's composites (label 1) followed by its real images (label 0).

        Returns:
            ``2B×3×H×W`` images and ``2B`` float labels.
        """
        composite, real = batch[keys.COMPOSITE], batch[keys.TARGET]
        labels = torch.cat([composite.new_ones(len(composite)), real.new_zeros(len(real))])
        return torch.cat([composite, real]), labels

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
        self.backbone.load_state_dict(state)
        rank_zero_info(f"HarmonyClassifier: backbone weights {weights}")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Weights from a checkpoint are never overwritten by the pre-trained ones."""
        self._weights_ready = True

    # --- steps ------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Binary cross-entropy over the batch's composites and real images."""
        images, labels = self.labelled_images(batch)
        logits = self(images)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        accuracy = ((logits > 0).float() == labels).float().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        self.log("train/accuracy", accuracy, batch_size=len(labels))
        return loss

    def _update(self, batch: Batch, accuracy: BinaryAccuracy, auroc: BinaryAUROC) -> None:
        images, labels = self.labelled_images(batch)
        probabilities = torch.sigmoid(self(images))
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
        return torch.sigmoid(self(batch[keys.COMPOSITE]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The injected optimizer (default AdamW, lr 1e-4) over the trained parameters."""
        parameters = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer is None:
            return torch.optim.AdamW(parameters, lr=1e-4)
        return self.optimizer(parameters)
