"""SyntheticHarmony: iHarmony4-style triplets generated offline from scikit-image's photographs."""

from __future__ import annotations

from pathlib import Path

from harmony.data.datamodules import IHarmony4DataModule


class SyntheticHarmonyDataModule(IHarmony4DataModule):
    """Synthetic iHarmony4-style data that needs no download (the quickstart's and the tests' data).

    The tree is generated once, deterministically from ``seed``, into ``root`` in the iHarmony4 layout
    (subset ``HSynthetic``, with ``IHD_{train,val,test}.txt``; splits disjoint by source photo), then
    read like iHarmony4. See :func:`harmony.data.synthetic.generate_synthetic_harmony`.

    Args:
        root: Where the generated tree lives (regenerated when the arguments change).
        seed: Generation seed.
        num_train: Training composites.
        num_val: Validation composites.
        num_test: Test composites.
        source_size: Side length of the generated files.
        image_size: Side length the model sees.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        eval_size: Side length the evaluator scores at.
        augment: Random-resized crop and flip for training.
        scene_color_jitter: Strength in [0, 1] of a random colour change of the whole training scene,
            composite and real alike; it stops a model memorising the few source photos (0 = off).
        eval_image_size: Side length of evaluation images, when it differs from ``image_size``.
    """

    def __init__(
        self,
        root: str | Path = "data/synthetic",
        seed: int = 0,
        num_train: int = 480,
        num_val: int = 48,
        num_test: int = 96,
        source_size: int = 256,
        image_size: int = 256,
        batch_size: int = 8,
        num_workers: int = 0,
        eval_size: int = 256,
        augment: bool = True,
        scene_color_jitter: float = 0.0,
        eval_image_size: int | None = None,
    ) -> None:
        super().__init__(
            root,
            ["HSynthetic"],
            0.0,
            image_size,
            batch_size,
            num_workers,
            eval_size,
            augment,
            scene_color_jitter=scene_color_jitter,
            eval_image_size=eval_image_size,
        )
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
