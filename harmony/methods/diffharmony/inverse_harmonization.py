"""DiffHarmony++'s inverse harmonization (Sec. 4.1): generate composites from real images and masks.

The inverse model is DiffHarmony++ with the two images' roles swapped: the real image and the mask are
the condition, the composite is the denoising target (the official code's ``--mode inverse``). Its own
Harmony-VAE is trained the same way: it reconstructs the composite from its latent, conditioned on the
real image and the mask. The outcome is one-to-many — each seed gives another plausible composite — and
``harmony generate-composites`` turns a trained model into new training data.

Both modules are the forward ones with :class:`InverseRoles` in front: every batch that has a ground
truth has its composite and real image (and their evaluation copies and file paths) exchanged as a step
receives it, so training, validation, test and prediction on any iHarmony4-layout set run the
inverse task with no other change. A batch without a ground truth (``harmony predict`` on a folder,
``harmony harmonize``) is already the inverse input: its ``composite`` is the real image to turn into a
composite.
"""

from __future__ import annotations

from typing import Any

from harmony.data import types as keys
from harmony.methods.base import Batch
from harmony.methods.diffharmony.diffharmony_plusplus import DiffHarmonyPlusPlus
from harmony.methods.diffharmony.harmony_vae import HarmonyVAE

SWAPPED_KEYS = (
    (keys.COMPOSITE, keys.TARGET),
    (keys.EVAL_COMPOSITE, keys.EVAL_TARGET),
    (keys.COMPOSITE_PATH, keys.TARGET_PATH),
)
"""The pairs of batch keys whose values the inverse task exchanges."""


def swap_roles(batch: Batch) -> Batch:
    """The batch with its composite and real image exchanged (a new dict; the batch itself is unchanged).

    A batch without a ground truth is returned as it is. Each pair of :data:`SWAPPED_KEYS` is exchanged
    when the batch has both keys (evaluation copies only exist in validation and test batches).
    """
    if keys.TARGET not in batch:
        return batch
    swapped = dict(batch)
    for first, second in SWAPPED_KEYS:
        if first in batch and second in batch:
            swapped[first], swapped[second] = batch[second], batch[first]
    return swapped


class InverseRoles:
    """Mixin, listed before a harmonization module: every step sees its batch with the roles swapped.

    The swap happens in the four step methods rather than in Lightning's batch-transfer hooks, which a
    DataModule may override (Lightning then ignores the module's).
    """

    # The validation step's composite is the real image and its target the composite.
    grid_column_labels = ("real", "generated", "composite")

    def training_step(self, batch: Batch, batch_idx: int) -> Any:
        """The base module's training step on the swapped batch."""
        return super().training_step(swap_roles(batch), batch_idx)  # type: ignore[misc]

    def validation_step(self, batch: Batch, batch_idx: int) -> Any:
        """The base module's validation step on the swapped batch."""
        return super().validation_step(swap_roles(batch), batch_idx)  # type: ignore[misc]

    def test_step(self, batch: Batch, batch_idx: int) -> Any:
        """The base module's test step on the swapped batch."""
        return super().test_step(swap_roles(batch), batch_idx)  # type: ignore[misc]

    def predict_step(self, batch: Batch, batch_idx: int) -> Any:
        """The base module's prediction step on the swapped batch."""
        return super().predict_step(swap_roles(batch), batch_idx)  # type: ignore[misc]


class InverseHarmonization(InverseRoles, DiffHarmonyPlusPlus):
    """The inverse harmonization model: a composite generated from a real image and its foreground mask.

    DiffHarmony++ with the roles swapped (:class:`InverseRoles`): the UNet sees ``cat[noisy latent, mask,
    latent of the real image]`` and learns to denoise the *composite's* latent (the foreground-weighted
    loss weights the foreground, the part that changes); inference decodes with the inverse Harmony-VAE
    (``harmony_vae_pretrained``, trained by :class:`InverseHarmonyVAE`) conditioned on the real image and
    mask, and pastes the real image's background. Evaluation on a harmonization set scores the generated
    composites against the data set's composites (how close the model comes to the edits the data set
    made; many other composites are as valid).

    Arguments: see :class:`~harmony.methods.diffharmony.DiffHarmonyPlusPlus` (and
    :class:`~harmony.methods.diffharmony.DiffHarmony`); the paper keeps DiffHarmony++'s settings.
    """


class InverseHarmonyVAE(InverseRoles, HarmonyVAE):
    """The inverse Harmony-VAE: the composite reconstructed from its latent, conditioned on the real image.

    :class:`~harmony.methods.diffharmony.HarmonyVAE` with the roles swapped (:class:`InverseRoles`, the
    official code's ``--mode inverse``): the frozen encoder encodes the composite and the decoder, given
    the real image and the mask, reconstructs it. ``fit`` exports it to ``<log_dir>/pretrained/harmony_vae``
    for :class:`InverseHarmonization`'s ``harmony_vae_pretrained``.

    Arguments: see :class:`~harmony.methods.diffharmony.HarmonyVAE`.
    """
