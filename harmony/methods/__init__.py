"""LightningModules: one per paper, plus the training-free baselines."""

from harmony.methods.base import HarmonizationModule
from harmony.methods.baselines import Composite, HistogramMatching, ReinhardLabTransfer

__all__ = ["Composite", "HarmonizationModule", "HistogramMatching", "ReinhardLabTransfer"]
