from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.trees import make_iharmony4_tree

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# harmonize's ONNX exports of checkpoints are cached here, not in the user's ~/.cache (subprocesses too).
os.environ["HARMONY_CACHE"] = tempfile.mkdtemp(prefix="harmony-test-cache-")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def iharmony4_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny iHarmony4-layout tree shared by the session (read-only for tests)."""
    return make_iharmony4_tree(tmp_path_factory.mktemp("iharmony4"))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small SyntheticHarmony tree (64 px) shared by the session."""
    from harmony.data.synthetic import generate_synthetic_harmony

    root = tmp_path_factory.mktemp("synthetic") / "tree"
    return generate_synthetic_harmony(
        root, seed=0, num_train=16, num_val=4, num_test=8, image_size=64, show_progress=False
    )


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Lightning logs, predictions and checkpoints land in the test's own folder.
    monkeypatch.chdir(tmp_path)


REPO_ROOT = Path(__file__).resolve().parent.parent


def fit_tiny(config: str, root: Path, run: Path, steps: int, *extra: str) -> Path:
    """The checkpoint of ``harmony fit`` of ``tests/configs/<config>`` on ``root`` for ``steps`` steps."""
    from harmony.cli import main

    args = ["fit", "--config", str(REPO_ROOT / "tests" / "configs" / config), f"--data.init_args.root={root}"]
    args += [
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
    ]
    assert main([*args, *extra, f"--trainer.default_root_dir={run}"]) == 0
    (checkpoint,) = (run / "checkpoints").glob("*.ckpt")
    return checkpoint


@pytest.fixture(scope="session")
def randomised_parametric_checkpoint(iharmony4_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SemiSupervisedParametric checkpoint with randomised weights (outputs far from the identity)."""
    trained = fit_tiny(
        "semi_supervised_parametric_iharmony4.yaml", iharmony4_root, tmp_path_factory.mktemp("run"), 1
    )
    contents = torch.load(trained, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for name, value in contents["state_dict"].items():
        if value.is_floating_point() and "running" not in name:
            contents["state_dict"][name] = value + torch.randn(value.shape, generator=generator) * 0.05
    path = tmp_path_factory.mktemp("randomised") / "parametric.ckpt"
    torch.save(contents, path)
    return path


@pytest.fixture(scope="session")
def inverse_checkpoint(iharmony4_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny InverseHarmonization trained for one step."""
    run = tmp_path_factory.mktemp("inverse_run")
    return fit_tiny("inverse_harmonization_iharmony4.yaml", iharmony4_root, run, 1)


@pytest.fixture(scope="session")
def classifier_checkpoint(iharmony4_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny HarmonyClassifier trained for two steps."""
    return fit_tiny(
        "harmony_classifier_iharmony4.yaml", iharmony4_root, tmp_path_factory.mktemp("classifier"), 2
    )


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (tests run inside their own tmp folder)."""
    return REPO_ROOT


def write_composite_and_mask(
    folder: Path, height: int = 45, width: int = 70, seed: int = 1
) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """A random RGB composite and a rectangular mask written as PNGs, for ``harmony harmonize`` tests.

    Returns:
        The composite's and the mask's paths, and the two arrays (``H×W×3`` and ``H×W`` ``uint8``).
    """
    rng = np.random.default_rng(seed)
    composite = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask[height // 9 : 2 * height // 3, width // 3 : 6 * width // 7] = 255
    composite_path, mask_path = folder / "c.png", folder / "m.png"
    Image.fromarray(composite).save(composite_path)
    Image.fromarray(mask).save(mask_path)
    return composite_path, mask_path, composite, mask
