"""The authors' released ``ckpt_g39.pth`` (``adobe/PIH``), read into :class:`SemiSupervisedParametric`.

The release is one ``torch.save`` file, ``{"epoch": 39, "state_dict": ..., "args": argparse.Namespace}``,
whose state dict is the official ``Model_Composite_PL`` as its ``inference.py`` builds it: ``PL``, a
ResNet-50 over the 7-channel stack ``[C, B, M]`` with a 96-way sigmoid head, and ``gainnet``, the shading
network. Names map by prefix:

- ``PL.fc.*`` → ``curve_predictor.head.*`` and every other ``PL.*`` → ``curve_predictor.encoder.trunk.*``
  (torchvision's ResNet-50 has the same names; :class:`.CurvePredictor` with
  ``values="lut_cell_centres"`` turns the 96 sigmoid outputs into the release's curves);
- ``gainnet.*`` → ``shading_net.*`` unchanged (:class:`.ReleasedShadingUNet`, including the layers the
  release stores but never runs).

A ``module.`` prefix (a checkpoint saved from ``DataParallel``) is dropped first. The model is built from
``experiments/semi_supervised_parametric_pih_release.yaml``, which also sets what the release feeds its
networks (``shading_input: curved_over_background``) and its inference gain floor 0.6. On random weights
the imported model matches the official one: each network bit for bit, the whole 512×512 model to 1e-5
(the curves are evaluated by interpolation rather than ``grid_sample``, which differs by float rounding).
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import torch

from harmony.errors import HarmonyInputError, load_strictly
from harmony.methods.semi_supervised_parametric.semi_supervised_parametric import SemiSupervisedParametric

RELEASE_PREFIXES = {
    "PL.fc.": "curve_predictor.head.",
    "PL.": "curve_predictor.encoder.trunk.",
    "gainnet.": "shading_net.",
}
"""Released name prefix → harmony name prefix, most specific first."""

_PARALLEL_PREFIX = "module."


def pih_state_from_release(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The release's ``state_dict`` under :class:`SemiSupervisedParametric`'s names.

    Raises:
        HarmonyInputError: A name that is neither the curve network's (``PL.``) nor the shading net's
            (``gainnet.``).
    """
    converted = {}
    for name, value in state.items():
        bare = name.removeprefix(_PARALLEL_PREFIX)
        prefix = next((released for released in RELEASE_PREFIXES if bare.startswith(released)), None)
        if prefix is None:
            raise HarmonyInputError(None, f"unexpected parameter {name!r} in a PIH checkpoint")
        converted[RELEASE_PREFIXES[prefix] + bare[len(prefix) :]] = value
    return converted


def read_pih_release(path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a ``ckpt_g39.pth``-style file, read without unpickling arbitrary objects.

    Raises:
        HarmonyInputError: The file is unreadable or holds no PIH ``state_dict``.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message here advises weights_only=False, which is not the remedy for a wrong file.
        raise HarmonyInputError(
            path, "not a PIH checkpoint (not a torch file of tensors, an epoch and the training args)"
        ) from None
    except Exception as error:  # noqa: BLE001 - any unreadable file is a user error here
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise HarmonyInputError(path, f"cannot read checkpoint ({type(error).__name__}: {message})") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise HarmonyInputError(path, "not a PIH checkpoint (no state_dict of tensors)")
    return state


def load_pih_release(path: Path, config: Path) -> SemiSupervisedParametric:
    """Build ``config``'s model and load the release at ``path`` into it strictly.

    Args:
        path: The released ``ckpt_g39.pth``.
        config: An experiment config of the released variant
            (``experiments/semi_supervised_parametric_pih_release.yaml``).

    Raises:
        HarmonyInputError: The file is not a PIH checkpoint, or a weight is missing, unexpected or of
            another shape than the configured model's.
    """
    from harmony.lightning_cli import make_cli

    try:
        state = pih_state_from_release(read_pih_release(path))
    except HarmonyInputError as error:
        if error.path is not None:
            raise
        raise HarmonyInputError(path, error.problem) from None
    model = make_cli(["--config", str(config), "--trainer.logger=false"], run=False).model
    if not isinstance(model, SemiSupervisedParametric):
        raise HarmonyInputError(config, f"builds a {type(model).__name__}, not a SemiSupervisedParametric")
    load_strictly(model, state, path, "does not fit the configured PIH model")
    return model
