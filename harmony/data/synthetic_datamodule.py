"""SyntheticHarmony: iHarmony4-style triplets generated offline from photographs bundled with packages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harmony.data.datamodules import IHarmony4DataModule


class SyntheticHarmonyDataModule(IHarmony4DataModule):
    """Synthetic iHarmony4-style data that needs no download (the quickstart's and the tests' data).

    The tree is generated once, deterministically from ``seed``, into ``root`` in the iHarmony4 layout
    (subset ``HSynthetic``, with ``IHD_{train,val,test}.txt``; splits disjoint by source photo), then
    read like iHarmony4 with its own validation split. See
    :func:`harmony.data.synthetic.generate_synthetic_harmony`. The training data come from nine photos
    only: ``scene_color_jitter`` stops a model memorising their colours.

    Args:
        root: Where the generated tree lives (regenerated when the arguments change).
        seed: Generation seed.
        num_train: Training composites.
        num_val: Validation composites.
        num_test: Test composites.
        source_size: Side length of the generated files.
        **kwargs: See :class:`~harmony.data.datamodules.HarmonyDataModule`.
    """

    def __init__(
        self,
        root: str | Path = "data/synthetic",
        seed: int = 0,
        num_train: int = 480,
        num_val: int = 48,
        num_test: int = 96,
        source_size: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, subsets=["HSynthetic"], val_fraction=0.0, **kwargs)
        self.seed = seed
        self.counts = (num_train, num_val, num_test)
        self.source_size = source_size

    def prepare_data(self) -> None:
        """Generate the tree if it is missing or was made with other arguments."""
        from harmony.data.synthetic import generate_synthetic_harmony

        num_train, num_val, num_test = self.counts
        generate_synthetic_harmony(self.root, self.seed, num_train, num_val, num_test, self.source_size)

    def setup(self, stage: str) -> None:
        """Make sure the tree exists (cheap when cached), then build the datasets."""
        self.prepare_data()
        super().setup(stage)
