"""Data sets, DataModules and the shared batch format (:mod:`harmony.data.types`).

Names load on first use (:mod:`harmony.lazy`): the readers in :mod:`harmony.data.io` import without
Lightning or torch.
"""

from harmony.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "DualStreamDataModule": ".real_composites",
        "FolderDataModule": ".datamodules",
        "HarmonyDataModule": ".datamodules",
        "HumanHarmonyDataModule": ".datamodules",
        "IHarmony4DataModule": ".datamodules",
        "RPHarmonyDataModule": ".datamodules",
        "RealHMDataModule": ".datamodules",
        "RetouchPairsDataModule": ".real_composites",
        "SyntheticHarmonyDataModule": ".synthetic_datamodule",
        "TripletDataset": ".datasets",
        "TripletFoldersDataModule": ".datamodules",
        "TripletRecord": ".records",
    },
)
