"""adobe/PIH's released ``ckpt_g39.pth`` imported into the released variant of SemiSupervisedParametric."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from harmony.cli import main
from harmony.errors import HarmonyInputError
from harmony.methods.semi_supervised_parametric import (
    ConvEncoder,
    CurvePredictor,
    SemiSupervisedParametric,
)
from harmony.methods.semi_supervised_parametric.any_resolution import curves_to_uint8_table
from harmony.methods.semi_supervised_parametric.released_weights import (
    RELEASE_PREFIXES,
    pih_state_from_release,
)
from harmony.methods.semi_supervised_parametric.rgb_curves import apply_curves, cell_centre_curves
from harmony.methods.semi_supervised_parametric.shading_map import ReleasedShadingUNet
from tests.conftest import REPO_ROOT, write_composite_and_mask

MANIFEST = REPO_ROOT / "tests" / "fixtures" / "manifests" / "pih_ckpt_g39.json"
PAPER_SIZED = REPO_ROOT / "experiments" / "semi_supervised_parametric_pih_release.yaml"
TINY = REPO_ROOT / "tests" / "configs" / "semi_supervised_parametric_pih_release_tiny.yaml"


def _instantiate(node: object) -> object:
    """A ``class_path``/``init_args`` tree of a config as objects (the parts this test builds on meta)."""
    if isinstance(node, dict) and "class_path" in node:
        module, _, name = node["class_path"].rpartition(".")
        arguments = {key: _instantiate(value) for key, value in node.get("init_args", {}).items()}
        return getattr(importlib.import_module(module), name)(**arguments)
    return node


def test_the_release_maps_key_for_key_and_shape_for_shape_onto_the_paper_sized_model() -> None:
    manifest = json.loads(MANIFEST.read_text())["parameters"]
    released = {name: torch.empty(shape, device="meta") for name, shape in manifest.items()}
    converted = {name: list(value.shape) for name, value in pih_state_from_release(released).items()}
    model = yaml.safe_load(PAPER_SIZED.read_text())["model"]["init_args"]
    ours, parameters = {}, 0
    with torch.device("meta"):
        for part in ("curve_predictor", "shading_net"):
            module = _instantiate(model[part])
            ours |= {f"{part}.{name}": list(value.shape) for name, value in module.state_dict().items()}
            parameters += sum(p.numel() for p in module.parameters())
    assert converted == ours  # parameters and BatchNorm buffers, names and shapes
    assert parameters == 93_641_314  # the paper's "93M"
    assert model["discriminator"] is None  # the release holds only the generator
    assert (model["low_resolution"], model["shading_net"]["init_args"]["min_gain"]) == (512, 0.6)


def _release_lut(values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """PIH's curve application from its definition: a separable ``N³`` LUT read by ``grid_sample``.

    Output channel ``c`` of the LUT varies only along input channel ``c``'s axis (red along the last
    grid axis, blue along the first); trilinear lookup, ``align_corners=False``, border padding.
    """
    batch, _, size = values.shape
    axes = [(1, 1, size), (1, size, 1), (size, 1, 1)]
    lut = torch.stack(
        [values[:, c].reshape(batch, *axes[c]).expand(batch, size, size, size) for c in range(3)], dim=1
    )
    grid = (images * 2 - 1).permute(0, 2, 3, 1).unsqueeze(1)
    return F.grid_sample(lut, grid, mode="bilinear", padding_mode="border", align_corners=False).squeeze(2)


def test_65_knot_curves_are_the_release_lut_cell_centre_curves() -> None:
    torch.manual_seed(0)
    values = torch.rand(2, 3, 32)
    images = torch.rand(2, 3, 24, 40)
    images[:, :, 0, :6] = torch.tensor([0.0, 1.0, 1 / 64, 63 / 64, 0.5 / 32, 31.5 / 32])  # the flat ends
    curves = cell_centre_curves(values)
    assert curves.shape == (2, 3, 65)
    torch.testing.assert_close(apply_curves(images, curves), _release_lut(values, images), atol=1e-6, rtol=0)
    levels = (torch.arange(256) / 255.0).expand(1, 3, 1, 256)
    torch.testing.assert_close(
        torch.from_numpy(curves_to_uint8_table(curves[0].numpy())),
        _release_lut(values[:1], levels)[0, :, 0],
        atol=1e-6,
        rtol=0,
    )


def test_the_released_curve_predictor_is_sigmoid_values_at_cell_centres() -> None:
    torch.manual_seed(0)
    predictor = CurvePredictor(ConvEncoder(7, (8,)), num_knots=65, values="lut_cell_centres")
    assert predictor.head.out_features == 96  # the release's fc: 3 × 32
    inputs = torch.rand(2, 7, 16, 16)
    centres = (torch.arange(32) + 0.5) / 32
    torch.testing.assert_close(predictor(inputs)[:, :, 1::2], centres.expand(2, 3, 32))  # starts at identity
    with torch.no_grad():
        predictor.head.weight.normal_()
    raw = predictor.head(predictor.encoder(inputs)).view(2, 3, 32)
    torch.testing.assert_close(predictor(inputs), cell_centre_curves(torch.sigmoid(raw)))
    with pytest.raises(ValueError, match="odd"):
        CurvePredictor(ConvEncoder(7, (8,)), num_knots=64, values="lut_cell_centres")


def test_the_released_shading_net_bounds_its_gain_and_never_runs_its_unused_layers() -> None:
    torch.manual_seed(0)
    net = ReleasedShadingUNet(width=2).eval()
    inputs = torch.rand(1, 10, 448, 448)
    with torch.no_grad():
        gain = net(inputs)
        assert gain.shape == (1, 1, 448, 448) and 0.6 <= gain.min() and gain.max() <= 1.0
        for name in ("conv4", "conv5", "conv6", "conv7", "conv8", "conv9"):
            for parameter in getattr(net, name).parameters():
                parameter.normal_()
        assert torch.equal(net(inputs), gain)
        for bias, bound in ((-100.0, 0.6), (100.0, 1.0)):  # a saturated output reaches each bound exactly
            net.conv_only.bias.fill_(bias)
            assert torch.all(net(inputs) == torch.tensor(bound))
    with pytest.raises(ValueError, match="438"):
        net(torch.rand(1, 10, 256, 256))


class _RecordingShadingNet(torch.nn.Module):
    in_channels = 10

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.inputs = inputs
        return torch.ones_like(inputs[:, :1])


def test_the_released_inputs_composite_as_background_and_curves_over_the_background() -> None:
    torch.manual_seed(0)
    shading = _RecordingShadingNet()
    model = SemiSupervisedParametric(
        CurvePredictor(ConvEncoder(7, (8,)), num_knots=65, values="lut_cell_centres"),
        shading,
        low_resolution=16,
        missing_background="composite",
        shading_input="curved_over_background",
    )
    composite, background = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 3:9] = 1
    with torch.no_grad():
        model.curve_predictor.head.weight.normal_()  # curves that depend on the inputs
    model.predict_parameters(composite, mask)
    torch.testing.assert_close(shading.inputs[:, 3:6], composite)
    curves, _ = model.predict_parameters(composite, mask, background)
    curved = apply_curves(composite, curves)
    torch.testing.assert_close(
        shading.inputs[:, 6:], torch.cat([mask, curved * mask + background * (1 - mask)], 1)
    )
    with pytest.raises(ValueError, match="use_background_input"):
        SemiSupervisedParametric(
            CurvePredictor(ConvEncoder(4, (8,))),
            use_background_input=False,
            shading_input="curved_over_background",
        )


def test_release_names_map_by_prefix_and_tolerate_data_parallel() -> None:
    value = torch.zeros(1)
    assert pih_state_from_release({"module.PL.fc.bias": value, "gainnet.conv0.bias": value}) == {
        "curve_predictor.head.bias": value,
        "shading_net.conv0.bias": value,
    }
    with pytest.raises(HarmonyInputError, match="unexpected parameter 'D.conv0.weight'"):
        pih_state_from_release({"D.conv0.weight": value})


def _release_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Harmony's state dict under the release's names (the inverse of the prefix rename)."""
    inverse = {ours: released for released, ours in RELEASE_PREFIXES.items()}
    return {
        inverse[prefix] + name[len(prefix) :]: value
        for name, value in state.items()
        for prefix in [next(ours for ours in inverse if name.startswith(ours))]
    }


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A ``ckpt_g39.pth``-format file of the tiny released variant with random weights and BN statistics."""
    from harmony.cli import make_cli

    torch.manual_seed(3)
    model = make_cli(["--config", str(TINY), "--trainer.logger=false"], run=False).model
    state = model.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            if name.endswith("running_var"):
                value.uniform_(0.5, 2.0)
            elif name.endswith("num_batches_tracked"):
                value.fill_(1234)
            elif value.is_floating_point():
                value.add_(0.05 * torch.randn_like(value))
    path = tmp_path_factory.mktemp("pih") / "ckpt_g39.pth"
    args = argparse.Namespace(pl_dim=32, masking=True, maskoffset=0.5, swap=True, onlysaveg=True)
    torch.save({"epoch": 39, "state_dict": _release_names(state), "args": args}, path)
    return path, {name: value.clone() for name, value in state.items()}


def test_import_the_release_then_harmonize(
    tiny_release: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    source, original = tiny_release
    checkpoint = tmp_path / "checkpoints" / "pih.ckpt"
    command = ["import-weights", "--from", "pih", str(source), "--output", str(checkpoint)]
    assert main([*command, "--config", str(TINY)]) == 0
    imported = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert imported.keys() == original.keys()
    for name, value in original.items():
        assert torch.equal(imported[name], value), name

    composite_path, mask_path, composite, mask = write_composite_and_mask(tmp_path)
    output, lut = tmp_path / "harmonized.png", tmp_path / "curves.cube"
    harmonize = ["harmonize", "--checkpoint", str(checkpoint), "--composite", str(composite_path)]
    harmonize += ["--mask", str(mask_path), "--output", str(output), "--export-lut", str(lut)]
    assert main([*harmonize, "--device", "cpu"]) == 0
    result = np.asarray(Image.open(output).convert("RGB"))
    np.testing.assert_array_equal(result[mask == 0], composite[mask == 0])
    assert not np.array_equal(result[mask > 0], composite[mask > 0])
    assert "LUT_3D_SIZE 65" in lut.read_text()  # the release's curves exactly (their knots k/64)


@pytest.mark.parametrize("problem", ["not a checkpoint", "no state_dict", "missing key", "wrong shape"])
def test_a_broken_release_is_one_clear_line(
    problem: str,
    tiny_release: tuple[Path, dict[str, torch.Tensor]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "ckpt_g39.pth"
    if problem == "not a checkpoint":
        source.write_bytes(b"\x89PNG not a torch file")
    elif problem == "no state_dict":
        torch.save({"epoch": 39, "weights": [1, 2]}, source)
    else:
        release = torch.load(tiny_release[0], map_location="cpu", weights_only=False)
        if problem == "missing key":
            release["state_dict"].pop("gainnet.conv_only.bias")
        else:
            release["state_dict"]["PL.fc.weight"] = torch.zeros(90, 512)
        torch.save(release, source)
    checkpoint = tmp_path / "pih.ckpt"
    command = ["import-weights", "--from", "pih", str(source), "--output", str(checkpoint)]
    capsys.readouterr()
    assert main([*command, "--config", str(TINY)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("harmony: error:") and "\n" not in error and str(source) in error
    assert not checkpoint.exists()
