"""Semi-supervised Parametric Real-world Image Harmonization (Wang et al., CVPR 2023).

* :mod:`.semi_supervised_parametric` — :class:`SemiSupervisedParametric`, the LightningModule: the
  two-stage parametric model and its dual-stream (supervised + adversarial) training.
* :mod:`.rgb_curves` — the global RGB curves (stage t1): :class:`CurvePredictor` and applying them.
* :mod:`.shading_map` — the local shading map (stage t2): :class:`ShadingUNet`, and
  :class:`ReleasedShadingUNet`, the authors' released network.
* :mod:`.any_resolution` — the curves and shading applied at full resolution, the ``.cube`` LUT and
  curves JSON exports, in NumPy (no torch).
* :mod:`.onnx_export` / :mod:`.onnx_runtime` — the networks as an ONNX file, and harmonizing with it
  through ONNX Runtime without torch.
* :mod:`.released_weights` — adobe/PIH's ``ckpt_g39.pth`` read into the released variant.
* :mod:`.discriminator` — the per-pixel discriminator of the adversarial stream: :class:`UNetDiscriminatorSN`.
* :mod:`.backbones` — the image encoders the curve predictor pools into one feature vector.

Names load on first use (:mod:`harmony.lazy`), so the torch-free modules import without torch.
"""

from harmony.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "ConvEncoder": ".backbones",
        "CurvePredictor": ".rgb_curves",
        "MaskedStatisticsEncoder": ".backbones",
        "OnnxParametricHarmonizer": ".onnx_runtime",
        "ParametricAdjustments": ".any_resolution",
        "ReleasedShadingUNet": ".shading_map",
        "ResNetEncoder": ".backbones",
        "SemiSupervisedParametric": ".semi_supervised_parametric",
        "ShadingUNet": ".shading_map",
        "UNetDiscriminatorSN": ".discriminator",
    },
)
