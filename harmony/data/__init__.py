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
from harmony.data.records import TripletRecord
from harmony.data.synthetic_datamodule import SyntheticHarmonyDataModule

__all__ = [
    "FolderDataModule",
    "HarmonyDataModule",
    "HumanHarmonyDataModule",
    "IHarmony4DataModule",
    "RPHarmonyDataModule",
    "RealHMDataModule",
    "SyntheticHarmonyDataModule",
    "TripletDataset",
    "TripletFoldersDataModule",
    "TripletRecord",
]
