"""Semi-supervised Parametric Real-world Image Harmonization (Wang et al., CVPR 2023).

* :mod:`.semi_supervised_parametric` — :class:`SemiSupervisedParametric`, the LightningModule: the
  two-stage parametric model and its dual-stream (supervised + adversarial) training.
* :mod:`.rgb_curves` — the global RGB curves (stage t1): :class:`CurvePredictor`, applying them at any
  resolution and exporting them as a 3D LUT.
* :mod:`.shading_map` — the local shading map (stage t2): :class:`ShadingUNet`, and
  :class:`ReleasedShadingUNet`, the authors' released network.
* :mod:`.released_weights` — adobe/PIH's ``ckpt_g39.pth`` read into the released variant.
* :mod:`.discriminator` — the per-pixel discriminator of the adversarial stream: :class:`UNetDiscriminatorSN`.
* :mod:`.backbones` — the image encoders the curve predictor pools into one feature vector.
"""

from harmony.methods.semi_supervised_parametric.backbones import (
    ConvEncoder,
    MaskedStatisticsEncoder,
    ResNetEncoder,
)
from harmony.methods.semi_supervised_parametric.discriminator import UNetDiscriminatorSN
from harmony.methods.semi_supervised_parametric.rgb_curves import CurvePredictor
from harmony.methods.semi_supervised_parametric.semi_supervised_parametric import (
    ParametricAdjustments,
    SemiSupervisedParametric,
)
from harmony.methods.semi_supervised_parametric.shading_map import ReleasedShadingUNet, ShadingUNet

__all__ = [
    "ConvEncoder",
    "CurvePredictor",
    "MaskedStatisticsEncoder",
    "ParametricAdjustments",
    "ReleasedShadingUNet",
    "ResNetEncoder",
    "SemiSupervisedParametric",
    "ShadingUNet",
    "UNetDiscriminatorSN",
]
