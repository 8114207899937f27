"""The Python API (``harmony.load``): the README's example as written, and every kind of input."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import harmony
from harmony.cli import main
from harmony.errors import HarmonyInputError
from harmony.methods import ReinhardLabTransfer
from tests.conftest import REPO_ROOT


def readme_example() -> str:
    """The Python block the README says this file runs."""
    text = (REPO_ROOT / "README.md").read_text()
    marker = text.index("<!-- tests/test_api.py runs this block as it stands -->")
    match = re.compile(r"```python\n(.*?)```", re.DOTALL).search(text, marker)
    assert match is not None
    return match.group(1)


def photo(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth photo-like composite with a shifted-colour foreground, and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 200 / width, yy * 200 / height, (xx + yy) * 100 / (width + height)], -1) + 30
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = 255
    image[mask > 0] = np.clip(image[mask > 0] * np.array([1.3, 0.8, 0.7]), 0, 255).astype(np.uint8)
    return image, mask


@pytest.fixture
def workspace(randomised_parametric_checkpoint: Path) -> Path:
    """The README example's files in the working folder: a checkpoint, an image, a folder of images."""
    Path("checkpoints").mkdir()
    shutil.copy(randomised_parametric_checkpoint, "checkpoints/quickstart.ckpt")
    image, mask = photo(120, 160, 0)
    Image.fromarray(image).save("composite.jpg", quality=95)
    Image.fromarray(mask).save("mask.png")
    for folder in ("composites", "masks"):
        Path(folder).mkdir()
    for index in range(3):
        image, mask = photo(60 + 10 * index, 90, index + 1)
        Image.fromarray(image).save(f"composites/{index}.png")
        Image.fromarray(mask).save(f"masks/{index}.png")
    return Path.cwd()


def test_the_readme_example_runs_and_matches_harmony_harmonize(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)  # noqa: S102 - the documented example
    printed = capsys.readouterr().out
    assert "composite_harmonized.png" in printed and "(120, 160, 3)" in printed

    command = ["harmonize", "--checkpoint", "checkpoints/quickstart.ckpt", "--composite", "composite.jpg"]
    assert main([*command, "--mask", "mask.png", "--output", "cli.png"]) == 0
    expected = np.asarray(Image.open("cli.png"))
    np.testing.assert_array_equal(namespace["array"], expected)
    np.testing.assert_array_equal(np.asarray(namespace["picture"]), expected)
    np.testing.assert_array_equal(np.asarray(Image.open(namespace["path"])), expected)
    assert namespace["path"] == Path("composite_harmonized.png")
    composite = np.asarray(Image.open("composite.jpg"))
    assert np.abs(expected.astype(int) - composite).max() > 10  # the model did change the foreground

    assert [path.name for path in namespace["paths"]] == ["0.png", "1.png", "2.png"]
    model = namespace["model"]
    for index in range(3):  # batched through the networks, each as if harmonized alone
        alone = model(
            np.asarray(Image.open(f"composites/{index}.png")), np.asarray(Image.open(f"masks/{index}.png"))
        )
        np.testing.assert_array_equal(np.asarray(Image.open(f"harmonized/{index}.png")), alone)
    assert namespace["curves"].shape == (3, 32)


def test_every_kind_of_input_gives_the_same_image(workspace: Path) -> None:
    model = harmony.load("quickstart")  # a name: checkpoints/quickstart.ckpt
    assert model.is_parametric and model.name == "OnnxParametricHarmonizer"
    image, mask = np.asarray(Image.open("composite.jpg")), np.asarray(Image.open("mask.png"))
    expected = model(image, mask)
    assert expected.dtype == np.uint8 and expected.shape == image.shape
    np.testing.assert_array_equal(expected[mask == 0], image[mask == 0])

    floats = model(image / 255.0, mask > 127)
    assert floats.dtype == np.float32
    np.testing.assert_array_equal(floats, expected / np.float32(255.0))
    rgba = Image.fromarray(np.dstack([image, mask]))  # the alpha channel is the mask
    np.testing.assert_array_equal(np.asarray(model(rgba)), expected)
    listed = model([image, Image.fromarray(image)], [mask, Image.fromarray(mask)])
    np.testing.assert_array_equal(listed[0], expected)
    np.testing.assert_array_equal(np.asarray(listed[1]), expected)
    assert model("composite.jpg", "mask.png", output="named.png") == Path("named.png")

    with_torch = harmony.load("checkpoints/quickstart.ckpt", device="cpu", runtime="torch")
    assert with_torch.name == "SemiSupervisedParametric"
    assert np.abs(with_torch(image, mask).astype(int) - expected).max() <= 1


def test_a_training_free_method_by_name() -> None:
    image, mask = photo(50, 70, 3)
    model = harmony.load("ReinhardLabTransfer", device="cpu")
    assert not model.is_parametric
    expected = ReinhardLabTransfer().harmonize_image(image, mask / 255.0)
    np.testing.assert_array_equal(model(image, mask), expected)
    with pytest.raises(HarmonyInputError, match="no curves or shading map"):
        model.adjustments(image, mask)


@pytest.mark.parametrize(
    ("source", "arguments", "message"),
    [
        ("nothing-here", {}, "no such checkpoint file"),
        ("ReinhardLabTransfer", {"composite": np.zeros((4, 4), np.uint8)}, "H×W×3"),
        ("ReinhardLabTransfer", {"composite": np.zeros((4, 4, 3), np.int32)}, "uint8 or float"),
        ("ReinhardLabTransfer", {"composite": np.zeros((4, 4, 3), np.uint8)}, "no mask given"),
        (
            "ReinhardLabTransfer",
            {"composite": np.zeros((4, 4, 3), np.uint8), "mask": np.zeros((4, 5))},
            "the mask is 5×4, the composite 4×4",
        ),
    ],
)
def test_mistakes_raise_one_clear_error(source: str, arguments: dict, message: str) -> None:
    with pytest.raises(HarmonyInputError, match=message):
        model = harmony.load(source, device="cpu")
        model(**arguments)
