"""harmony: train, evaluate and use image-harmonization models."""

__version__ = "0.1.0"
