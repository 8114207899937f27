"""The authors' DiffHarmony / DiffHarmony++ release: key manifest, strict import, harmonize from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file, save_file

from harmony.cli import main
from harmony.methods.diffharmony import DiffHarmony, DiffHarmonyPlusPlus, HarmonyVAEModel
from harmony.methods.diffharmony.released_weights import (
    harmony_vae_state_from_release,
    load_released_condition_vae,
    release_state_from_harmony_vae,
)
from harmony.methods.r2r.clear_vae import ClearVAESkips
from harmony.methods.r2r.maca import MACABank
from harmony.methods.semi_supervised_parametric import CurvePredictor, ResNetEncoder
from harmony.nn.latent import build_controlnet, build_unet, build_vae
from tests.conftest import REPO_ROOT, write_composite_and_mask
from tests.test_latent import make_tiny_pipeline

MANIFESTS = REPO_ROOT / "tests" / "fixtures" / "manifests"
TINY_PLUSPLUS = REPO_ROOT / "tests" / "configs" / "diffharmony_plusplus_iharmony4.yaml"


def test_the_released_condition_vae_maps_key_for_key_onto_the_paper_sized_harmony_vae() -> None:
    manifest = json.loads((MANIFESTS / "diffharmony_condition_vae.json").read_text())["parameters"]
    released = {name: torch.empty(shape, device="meta") for name, shape in manifest.items()}
    converted = {name: list(value.shape) for name, value in harmony_vae_state_from_release(released).items()}
    with torch.device("meta"):
        ours = HarmonyVAEModel.from_vae(build_vae("sd15_inpainting"))
    assert converted == {name: list(value.shape) for name, value in ours.state_dict().items()}
    assert (
        sum(value.numel() for value in ours.state_dict().values()) == 119_740_291
    )  # the release's 119,740,419 less add_conv_in's bias


def _release(folder: Path) -> tuple[Path, HarmonyVAEModel]:
    """A tiny release in the official layout: base/ (an inpainting pipeline) and condition_vae/."""
    make_tiny_pipeline(folder / "base")
    torch.manual_seed(7)
    harmony_vae = HarmonyVAEModel.from_vae(build_vae("tiny_inpainting"))
    with torch.no_grad():
        for parameter in harmony_vae.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))  # non-zero skips: the mapping shows
    (folder / "condition_vae").mkdir()
    config = {"_class_name": "ConditionVAE", "additional_in_channels": 1, "force_upcast": True}
    config |= {name: harmony_vae.config[name] for name in HarmonyVAEModel.config_arguments()}
    (folder / "condition_vae" / "config.json").write_text(json.dumps(config))
    released = {
        name: value.contiguous()
        for name, value in release_state_from_harmony_vae(harmony_vae.state_dict()).items()
    }
    save_file(released, folder / "condition_vae" / "diffusion_pytorch_model.safetensors")
    return folder, harmony_vae


def test_condition_vae_round_trip_decodes_identically(tmp_path: Path) -> None:
    _, original = _release(tmp_path)
    imported = load_released_condition_vae(tmp_path / "condition_vae")
    for name, value in original.state_dict().items():
        assert torch.equal(imported.state_dict()[name], value), name
    composite, mask = torch.rand(1, 3, 32, 32) * 2 - 1, (torch.rand(1, 1, 32, 32) > 0.5).float()
    latents = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        assert torch.equal(
            imported.decode(latents, composite, mask).sample, original.decode(latents, composite, mask).sample
        )


def test_import_diffharmony_plusplus_then_harmonize(tmp_path: Path) -> None:
    source, harmony_vae = _release(tmp_path / "release")
    checkpoint = tmp_path / "checkpoints" / "diffharmony_plusplus.ckpt"
    command = ["import-weights", "--from", "diffharmony_plusplus", str(source), "--output", str(checkpoint)]
    assert main([*command, "--config", str(TINY_PLUSPLUS)]) == 0
    model = DiffHarmonyPlusPlus.load_from_checkpoint(checkpoint, map_location="cpu")
    released_unet = UNet2DConditionModel.from_pretrained(source / "base" / "unet")
    for name, value in released_unet.state_dict().items():
        assert torch.equal(model.unet.state_dict()[name], value), name
    for name, value in harmony_vae.state_dict().items():
        assert torch.equal(model.harmony_vae.state_dict()[name], value), name
    assert (tmp_path / "checkpoints" / "diffharmony_plusplus_harmony_vae" / "config.json").is_file()

    composite_path, mask_path, composite, mask = write_composite_and_mask(tmp_path)
    output = tmp_path / "harmonized.png"
    harmonize = ["harmonize", "--checkpoint", str(checkpoint), "--composite", str(composite_path)]
    assert main([*harmonize, "--mask", str(mask_path), "--output", str(output), "--device", "cpu"]) == 0
    result = np.asarray(Image.open(output).convert("RGB"))
    np.testing.assert_array_equal(result[mask == 0], composite[mask == 0])


@pytest.mark.parametrize("problem", ["no condition_vae", "missing parameter", "not a release"])
def test_an_incomplete_release_is_one_clear_line(
    problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _ = _release(tmp_path / "release")
    weights = source / "condition_vae" / "diffusion_pytorch_model.safetensors"
    if problem == "no condition_vae":
        for path in (source / "condition_vae").iterdir():
            path.unlink()
        (source / "condition_vae").rmdir()
    elif problem == "missing parameter":
        state = load_file(weights)
        state.pop("decoder.conv_out.weight")
        save_file(state, weights)
    else:
        source = tmp_path / "empty"
        source.mkdir()
    checkpoint = tmp_path / "out.ckpt"
    command = ["import-weights", "--from", "diffharmony_plusplus", str(source), "--output", str(checkpoint)]
    capsys.readouterr()  # the fixture's own progress bars
    assert main([*command, "--config", str(TINY_PLUSPLUS)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("harmony: error:") and "\n" not in error
    assert not checkpoint.exists()


def test_import_diffharmony_loads_the_released_unet_and_vae(tmp_path: Path) -> None:
    source, _ = _release(tmp_path / "release")
    checkpoint = tmp_path / "diffharmony.ckpt"
    config = REPO_ROOT / "tests" / "configs" / "diffharmony_iharmony4.yaml"
    command = ["import-weights", "--from", "diffharmony", str(source / "base"), "--output", str(checkpoint)]
    assert main([*command, "--config", str(config)]) == 0
    model = DiffHarmony.load_from_checkpoint(checkpoint, map_location="cpu")
    for part in ("unet", "vae"):
        released = load_file(source / "base" / part / "diffusion_pytorch_model.safetensors")
        for name, value in released.items():
            assert torch.equal(getattr(model, part).state_dict()[name], value), f"{part}.{name}"
    assert not list(tmp_path.glob("diffharmony_harmony_vae"))  # DiffHarmony has no Harmony-VAE


def test_pih_curve_network_has_the_resnet50_curve_predictors_names_and_shapes() -> None:
    """adobe/PIH's ``PL`` (``ckpt_g39.pth``) is the dual-stream config's curve predictor, name for name.

    Its shading network (``gainnet``, PIH's ``UNet_mask``) is another architecture than the paper-sized
    ``ShadingUNet``, and its curves are absolute sigmoid outputs at LUT-cell centres: importing the
    release needs a released-variant shading net and curve option first (issue 15).
    """
    manifest = json.loads((MANIFESTS / "pih_ckpt_g39.json").read_text())["parameters"]
    with torch.device("meta"):
        predictor = CurvePredictor(ResNetEncoder(arch="resnet50", in_channels=7, weights=False), num_knots=32)
    renamed = {
        name.replace("PL.fc.", "head.", 1)
        if name.startswith("PL.fc.")
        else "encoder.trunk." + name[3:]: shape
        for name, shape in manifest.items()
        if name.startswith("PL.")
    }
    assert renamed == {name: list(value.shape) for name, value in predictor.state_dict().items()}


def _manifest(name: str) -> dict[str, list[int]]:
    return json.loads((MANIFESTS / name).read_text())["parameters"]


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {name: list(value.shape) for name, value in module.state_dict().items()}


def test_r2r_diff_base_unet_converts_with_diffusers_onto_the_inpainting_unet() -> None:
    """R2R's ``diff-base.ckpt`` (DiffHarmony's UNet in the LDM key format) through diffusers' converter."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    with torch.device("meta"):
        unet = build_unet("sd15_inpainting")
        released = {name: torch.empty(shape) for name, shape in _manifest("r2r_diff_base_unet.json").items()}
        converted = convert_ldm_unet_checkpoint(released, dict(unet.config))
    assert {name: list(value.shape) for name, value in converted.items()} == _shapes(unet)


def test_r2r_clear_vae_maps_onto_the_vae_and_the_clear_vae_skips() -> None:
    """The released ``clear_vae/``: the SD VAE, 12 skip convolutions and 12 Adaptive Filters.

    The filters' fixed kernels are saved in the release (non-trainable parameters); harmony rebuilds them.
    """
    released = _manifest("r2r_clear_vae.json")
    kernels = ("Sobel_x", "Sobel_y", "Laplation", "Edge", "Roberts_x", "Roberts_y", "Sobel_xy", "Sobel_yx")
    vae_part = {name: shape for name, shape in released.items() if "skip_connect" not in name}
    vae_part = {name: shape for name, shape in vae_part.items() if not name.startswith("filters.")}
    skips_part = {}
    for name, shape in released.items():
        parts = name.split(".")
        if "skip_connect" in name:  # decoder.up_blocks.<b>.resnets.<r>.skip_connect.conv.weight
            skips_part[f"zero_convs.{3 * int(parts[2]) + int(parts[4])}.weight"] = shape
        elif name.startswith("filters.") and parts[2] not in kernels:
            skips_part[name] = shape
    with torch.device("meta"):
        vae = build_vae("sd15_inpainting")
        skips = ClearVAESkips()
    assert vae_part == _shapes(vae)
    assert skips_part == _shapes(skips)


def test_r2r_harmony_controller_maps_onto_the_controlnet_and_maca() -> None:
    """The released ``controlnet/``: a 7-channel-hint ControlNet with the four MACAs (``PCCAs``) inside.

    One difference: the release's ``conv_in`` takes the 4-channel latent, harmony's ControlNet (made from
    the 9-channel inpainting UNet's config) 9 channels; neither reads the noisy latents through it
    (``reads_noisy_latents: false``), so an import keeps harmony's.
    """
    released = _manifest("r2r_harmony_controller.json")
    with torch.device("meta"):
        controlnet = build_controlnet("sd15_inpainting", conditioning_channels=7)
    ours = _shapes(controlnet)
    theirs = {name: shape for name, shape in released.items() if not name.startswith("PCCAs.")}
    assert theirs.pop("conv_in.weight") == [320, 4, 3, 3] and ours.pop("conv_in.weight") == [320, 9, 3, 3]
    assert theirs == ours
    renames = {"conv1": "foreground_conv", "conv2": "background_conv", "mlp": "mlp"}
    maca = {}
    for name, shape in released.items():
        if name.startswith("PCCAs."):
            _, index, part, rest = name.split(".", 3)
            maca[f"blocks.{index}.{renames[part]}.{rest}"] = shape
    with torch.device("meta"):
        bank = MACABank((320, 640, 1280, 1280))
    assert maca == _shapes(bank)
