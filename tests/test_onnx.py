"""ONNX export of the parametric networks, ONNX Runtime against PyTorch, and harmonize without torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harmony.cli import main
from harmony.commands.summary import build_model
from harmony.methods.semi_supervised_parametric.onnx_export import export_onnx
from harmony.methods.semi_supervised_parametric.onnx_runtime import OnnxParametricHarmonizer
from tests.conftest import REPO_ROOT, write_composite_and_mask

TOLERANCE = 1e-5
"""Largest difference accepted between ONNX Runtime's and PyTorch's curves and gain (fp32)."""


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every weight off its initialisation, so the curves and shading are far from the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)


def inputs(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    composite = torch.rand(batch, 3, size, size, generator=generator)
    mask = torch.zeros(batch, 1, size, size)
    for index in range(batch):
        mask[index, :, index : size // 2 + index, size // 4 : 3 * size // 4] = 1
    return composite, mask


@pytest.mark.parametrize(
    "config",
    [
        "tests/configs/semi_supervised_parametric_iharmony4.yaml",  # ConvEncoder, [C, M]
        "experiments/quickstart.yaml",  # MaskedStatisticsEncoder, [C, B, M]
        "tests/configs/semi_supervised_parametric_pih_release_tiny.yaml",  # the release's networks
    ],
)
def test_onnx_runtime_equals_pytorch_for_any_batch(config: str, tmp_path: Path) -> None:
    model = build_model([str(REPO_ROOT / config)], []).eval()
    randomise(model)
    export_onnx(model, tmp_path / "model.onnx")
    runner = OnnxParametricHarmonizer(tmp_path / "model.onnx", "cpu")
    assert runner.low_resolution == model.low_resolution and runner.num_knots == model.num_knots
    assert runner.has_shading_map == model.has_shading_map
    for batch in (1, 3):  # the batch is a dynamic axis: the export was traced with 2
        composite, mask = inputs(batch, model.low_resolution, seed=batch)
        with torch.no_grad():
            curves, gain = model.predict_parameters(composite, mask)
        assert curves.std() > 0.01  # not the identity: the comparison means something
        outputs = runner.session.run(None, {"composite": composite.numpy(), "mask": mask.numpy()})
        np.testing.assert_allclose(outputs[0], curves.numpy(), atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(outputs[1], gain.numpy(), atol=TOLERANCE, rtol=0)


@pytest.fixture
def checkpoint(randomised_parametric_checkpoint: Path, tmp_path: Path) -> Path:
    """The session's randomised parametric checkpoint, copied (a test changes its modification time)."""
    copy = tmp_path / "parametric.ckpt"
    shutil.copy(randomised_parametric_checkpoint, copy)
    return copy


def harmony(*arguments: str, cache: Path, check_torch: bool = False) -> subprocess.CompletedProcess:
    """``harmony <arguments>`` in a fresh process; ``check_torch`` also reports whether torch was imported."""
    code = "import sys; from harmony.cli import main; status = main(sys.argv[1:]); "
    code += "print('torch imported' if 'torch' in sys.modules else 'torch not imported', file=sys.stderr); "
    code += "sys.exit(status)"
    command = [sys.executable, "-c", code] if check_torch else [sys.executable, "-m", "harmony"]
    environment = {**os.environ, "HARMONY_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*command, *arguments], capture_output=True, text=True, env=environment, cwd=REPO_ROOT
    )


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_export_then_harmonize_from_the_onnx_file_without_torch(checkpoint: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    exported = tmp_path / "model.onnx"
    result = harmony("export", "--checkpoint", str(checkpoint), "--output", str(exported), cache=cache)
    assert result.returncode == 0, result.stderr
    assert "largest difference" in result.stdout and exported.is_file()

    composite, mask, composite_array, mask_array = write_composite_and_mask(tmp_path, 90, 140)
    common = ["--composite", str(composite), "--mask", str(mask)]
    from_onnx = harmony(
        "harmonize", "--checkpoint", str(exported), *common, "--output", str(tmp_path / "onnx.png"),
        "--export-lut", str(tmp_path / "onnx.cube"), cache=cache, check_torch=True,
    )  # fmt: skip
    assert from_onnx.returncode == 0, from_onnx.stderr
    assert "torch not imported" in from_onnx.stderr
    with_torch = harmony(
        "harmonize", "--checkpoint", str(checkpoint), "--runtime", "torch", *common,
        "--output", str(tmp_path / "torch.png"), "--export-lut", str(tmp_path / "torch.cube"), cache=cache,
    )  # fmt: skip
    assert with_torch.returncode == 0, with_torch.stderr

    onnx_output, torch_output = read(tmp_path / "onnx.png"), read(tmp_path / "torch.png")
    background = mask_array == 0
    np.testing.assert_array_equal(onnx_output[background], composite_array[background])
    assert np.abs(onnx_output - torch_output).max() <= 1  # rounding of a 1e-5 difference, at most
    assert np.abs(torch_output[~background] - composite_array[~background]).mean() > 2  # it did something
    onnx_lut, torch_lut = (
        np.loadtxt(tmp_path / name, skiprows=4) for name in ("onnx.cube", "torch.cube")
    )  # fmt: skip
    np.testing.assert_allclose(onnx_lut, torch_lut, atol=1e-4)


def test_the_default_runtime_exports_once_then_runs_without_torch(checkpoint: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    composite, mask, *_ = write_composite_and_mask(tmp_path)
    arguments = ["harmonize", "--checkpoint", str(checkpoint), "--composite", str(composite)]
    arguments += ["--mask", str(mask)]

    first = harmony(*arguments, "--output", str(tmp_path / "first.png"), cache=cache)
    assert first.returncode == 0, first.stderr
    assert "exported the networks to ONNX once" in first.stderr
    assert len(list((cache / "onnx").glob("*.onnx"))) == 1

    second = harmony(*arguments, "--output", str(tmp_path / "second.png"), cache=cache, check_torch=True)
    assert second.returncode == 0, second.stderr
    assert "exported" not in second.stderr and "torch not imported" in second.stderr
    np.testing.assert_array_equal(read(tmp_path / "first.png"), read(tmp_path / "second.png"))

    # A rewritten checkpoint is exported again, not served from the stale cache.
    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 10**9))
    third = harmony(*arguments, "--output", str(tmp_path / "third.png"), cache=cache)
    assert "exported the networks to ONNX once" in third.stderr
    assert len(list((cache / "onnx").glob("*.onnx"))) == 2


def test_onnx_mistakes_are_one_line(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import onnx
    from onnx import TensorProto, helper

    composite, mask, *_ = write_composite_and_mask(tmp_path)
    not_onnx = tmp_path / "junk.onnx"
    not_onnx.write_bytes(b"not a model")
    foreign = tmp_path / "identity.onnx"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), foreign)
    harmonize = ["harmonize", "--composite", str(composite), "--mask", str(mask), "--output", "out.png"]
    cases = [
        ([*harmonize, "--checkpoint", str(not_onnx)], "junk.onnx: not an ONNX model"),
        ([*harmonize, "--checkpoint", str(foreign)], "identity.onnx: not a harmony parametric model"),
        ([*harmonize, "--checkpoint", str(foreign), "--runtime", "torch"], "is an ONNX export"),
        ([*harmonize, "--checkpoint", str(foreign), "--color-transfer", "hsv"], "--color-transfer needs"),
        ([*harmonize, "--method", "Composite", "--runtime", "onnx"], "Composite has no ONNX export"),
        (["export", "--checkpoint", str(checkpoint), "--output", "x.pt"], "x.pt: an ONNX export's name"),
        (["export", "--checkpoint", str(tmp_path / "none.ckpt")], "none.ckpt: checkpoint not found"),
    ]
    for arguments, message in cases:
        assert main(arguments) == 2, arguments
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error, (arguments, error)
    assert not Path("out.png").exists() and not Path("x.pt").exists()
