"""harmony: train, evaluate and use image-harmonization models.

``model = harmony.load("checkpoints/quickstart.ckpt")`` then ``model(composite, mask)``: see
:mod:`harmony.api`.
"""

from harmony.lazy import attach

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = attach(__name__, {"Harmonizer": ".api", "load": ".api"})
