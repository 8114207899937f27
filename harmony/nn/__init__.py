"""Paper-agnostic network building blocks."""

from harmony.nn.backbones import ConvEncoder as ConvEncoder
from harmony.nn.backbones import ResNetEncoder as ResNetEncoder
from harmony.nn.curves import CurvePredictor as CurvePredictor
from harmony.nn.discriminators import UNetDiscriminatorSN as UNetDiscriminatorSN
from harmony.nn.shading import ShadingUNet as ShadingUNet
