"""Data sets, DataModules and the shared batch format (:mod:`harmony.data.types`)."""

from harmony.data.datamodules import (
    FolderDataModule,
    HarmonyDataModule,
    HumanHarmonyDataModule,
    IHarmony4DataModule,
    RealHMDataModule,
    RPHarmonyDataModule,
    TripletFoldersDataModule,
)
from harmony.data.datasets import TripletDataset
from harmony.data.real_composites import DualStreamDataModule, RetouchPairsDataModule
from harmony.data.records import TripletRecord
from harmony.data.synthetic_datamodule import SyntheticHarmonyDataModule

__all__ = [
    "DualStreamDataModule",
    "FolderDataModule",
    "HarmonyDataModule",
    "HumanHarmonyDataModule",
    "IHarmony4DataModule",
    "RPHarmonyDataModule",
    "RetouchPairsDataModule",
    "RealHMDataModule",
    "SyntheticHarmonyDataModule",
    "TripletDataset",
    "TripletFoldersDataModule",
    "TripletRecord",
]
