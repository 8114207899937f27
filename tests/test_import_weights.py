"""The authors' released weights: key manifests, strict imports, harmonize from an imported checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from diffusers import UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision.transforms.functional import gaussian_blur

from harmony.cli import main
from harmony.commands import reproduce_table1
from harmony.methods.diffharmony import DiffHarmony, DiffHarmonyPlusPlus, HarmonyVAEModel
from harmony.methods.diffharmony.released_weights import (
    harmony_vae_state_from_release,
    load_released_condition_vae,
    release_state_from_harmony_vae,
)
from harmony.methods.r2r import R2R, AdaptiveFilter
from harmony.methods.r2r.clear_vae import ClearVAESkips
from harmony.methods.r2r.maca import MACABank
from harmony.methods.r2r.released_weights import (
    clear_vae_state_from_release,
    controller_state_from_release,
    release_state_from_clear_vae,
    release_state_from_controller,
)
from harmony.nn.latent import build_controlnet, build_unet, build_vae
from tests.conftest import REPO_ROOT, write_composite_and_mask
from tests.test_latent import make_tiny_pipeline

MANIFESTS = REPO_ROOT / "tests" / "fixtures" / "manifests"
TINY_PLUSPLUS = REPO_ROOT / "tests" / "configs" / "diffharmony_plusplus_iharmony4.yaml"


def harmonize_with(checkpoint: Path, folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``harmony harmonize --checkpoint`` on a composite; checks the background is kept exactly."""
    composite_path, mask_path, composite, mask = write_composite_and_mask(folder)
    output = folder / "harmonized.png"
    harmonize = ["harmonize", "--checkpoint", str(checkpoint), "--composite", str(composite_path)]
    assert main([*harmonize, "--mask", str(mask_path), "--output", str(output), "--device", "cpu"]) == 0
    result = np.asarray(Image.open(output).convert("RGB"))
    np.testing.assert_array_equal(result[mask == 0], composite[mask == 0])
    return result, composite, mask


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

    result, composite, mask = harmonize_with(checkpoint, tmp_path)


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


# The released Adaptive Filter's fixed kernels (before the 1e-3 scale) and the alpha each one is weighed
# with in the official forward: facts about the release that the import is checked against.
RELEASED_KERNELS = {
    "Sobel_x": (((1, 0, -1), (2, 0, -2), (1, 0, -1)), 0),
    "Sobel_y": (((1, 2, 1), (0, 0, 0), (-1, -2, -1)), 1),
    "Laplation": (((0, 1, 0), (1, -4, 1), (0, 1, 0)), 2),
    "Edge": (((-1, -1, -1), (-1, 8, -1), (-1, -1, -1)), 3),
    "Roberts_x": (((1, 0, 0), (0, -1, 0), (0, 0, 0)), 6),
    "Roberts_y": (((0, 1, 0), (-1, 0, 0), (0, 0, 0)), 7),
    "Sobel_xy": (((0, 1, 2), (-1, 0, 1), (-2, -1, 0)), 4),
    "Sobel_yx": (((-2, -1, 0), (-1, 0, 1), (0, 1, 2)), 5),
}


def _released_kernel(name: str, channels: int) -> torch.Tensor:
    kernel = torch.tensor(RELEASED_KERNELS[name][0], dtype=torch.float32) * 1e-3
    return kernel.expand(channels, 1, 3, 3).to(torch.float16)


def _with_real_kernels(manifest: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Meta tensors of the manifest's shapes, except the (small) fixed kernels, which are the release's."""
    state = {}
    for name, shape in manifest.items():
        kernel = name.split(".")[-1]
        if name.startswith("filters.") and kernel in RELEASED_KERNELS:
            state[name] = _released_kernel(kernel, shape[0])
        else:
            state[name] = torch.empty(shape, device="meta")
    return state


def _ldm_names_for_diffusers_names() -> dict[str, str]:
    """diffusers name → LDM name of the SD-1.x inpainting UNet, read off diffusers' converter itself."""
    ldm_names = list(_manifest("r2r_diff_base_unet.json"))
    markers = {name: torch.tensor([float(index)]) for index, name in enumerate(ldm_names)}
    with torch.device("meta"):
        config = dict(build_unet("sd15_inpainting").config)
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    converted = convert_ldm_unet_checkpoint(markers, config)
    return {name: ldm_names[int(marker.item())] for name, marker in converted.items()}


def test_import_r2r_diff_base_as_a_diffharmony_checkpoint_then_harmonize(tmp_path: Path) -> None:
    """``diff-base.ckpt`` in the LDM format, here for an SD-structured UNet of small widths (same names)."""
    folder = tmp_path / "narrow_sd15_unet"
    config = UNet2DConditionModel.load_config(REPO_ROOT / "harmony" / "configs" / "sd15_inpainting" / "unet")
    config |= {"block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 32, "sample_size": 4}
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(5)
    unet = _perturbed(build_unet(str(folder)))
    ldm_names = _ldm_names_for_diffusers_names()
    released = {ldm_names[name]: value for name, value in unet.state_dict().items()}
    released["first_stage_model.decoder.conv_out.bias"] = torch.zeros(3)  # other parts are ignored
    torch.save({"state_dict": released}, tmp_path / "diff-base.ckpt")
    experiment = yaml.safe_load((REPO_ROOT / "tests" / "configs" / "diffharmony_iharmony4.yaml").read_text())
    experiment["model"]["init_args"]["unet"]["init_args"]["config"] = str(folder)
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment))

    checkpoint = tmp_path / "checkpoints" / "diffharmony_r2r.ckpt"
    command = ["import-weights", "--from", "r2r_diff_base", str(tmp_path / "diff-base.ckpt")]
    assert main([*command, "--output", str(checkpoint), "--config", str(tmp_path / "experiment.yaml")]) == 0
    model = DiffHarmony.load_from_checkpoint(checkpoint, map_location="cpu")
    for name, value in unet.state_dict().items():
        assert torch.equal(model.unet.state_dict()[name], value), name
    exported = UNet2DConditionModel.from_pretrained(tmp_path / "checkpoints" / "diffharmony_r2r_unet")
    assert all(torch.equal(exported.state_dict()[name], value) for name, value in unet.state_dict().items())

    result, composite, mask = harmonize_with(checkpoint, tmp_path)

    released.pop(ldm_names["conv_in.weight"])
    torch.save({"state_dict": released}, tmp_path / "diff-base.ckpt")
    broken = tmp_path / "broken.ckpt"
    assert main([*command, "--output", str(broken), "--config", str(tmp_path / "experiment.yaml")]) == 2
    assert not broken.exists()


def test_r2r_clear_vae_maps_onto_the_vae_and_the_clear_vae_skips() -> None:
    """The released ``clear_vae/``: the SD VAE, 12 skip convolutions and 12 Adaptive Filters.

    The filters' fixed kernels are saved in the release (non-trainable parameters); the import checks
    them against the ones harmony rebuilds, so they are real tensors here and the rest is on meta.
    """
    vae_part, skips_part = clear_vae_state_from_release(_with_real_kernels(_manifest("r2r_clear_vae.json")))
    with torch.device("meta"):
        vae = build_vae("sd15_inpainting")
        skips = ClearVAESkips()
    assert _shapes_of(vae_part) == _shapes(vae)
    assert _shapes_of(skips_part) == _shapes(skips)


def _shapes_of(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {name: list(value.shape) for name, value in state.items()}


def test_r2r_harmony_controller_maps_onto_the_released_variant_controlnet_and_maca() -> None:
    """The released ``controlnet/``: a 7-channel-hint ControlNet with the four MACAs (``PCCAs``) inside.

    Its ``conv_in`` takes the 4-channel latent where harmony's default ControlNet (made from the 9-channel
    inpainting UNet's config) takes 9; neither reads the noisy latents through it
    (``reads_noisy_latents: false``), so the import builds the released variant (``in_channels=4``).
    """
    released = {
        name: torch.empty(shape, device="meta")
        for name, shape in _manifest("r2r_harmony_controller.json").items()
    }
    controlnet_part, maca_part = controller_state_from_release(released)
    with torch.device("meta"):
        controlnet = build_controlnet("sd15_inpainting", conditioning_channels=7, in_channels=4)
        bank = MACABank.from_controlnet(controlnet)
    assert _shapes_of(controlnet_part) == _shapes(controlnet)
    assert _shapes_of(maca_part) == _shapes(bank)
    assert controlnet_part["conv_in.weight"].shape == (320, 4, 3, 3)


def test_the_imported_adaptive_filter_computes_what_the_released_one_does() -> None:
    """The official forward weighs Sobel x/y, Laplacian, edge, diagonal Sobels, Roberts with alpha 0..7.

    Evaluated here from the release's tensors by that definition (torchvision's Gaussian blur for the
    high-pass, as the official code) and compared with harmony's filter after the import's remap.
    """
    torch.manual_seed(3)
    channels = 5
    alpha, beta = torch.randn(9), torch.randn(1)
    released = {"filters.0.alpha": alpha, "filters.0.beta": beta}
    released |= {f"filters.0.{name}": _released_kernel(name, channels) for name in RELEASED_KERNELS}
    _, skips_part = clear_vae_state_from_release(released)
    imported = AdaptiveFilter()
    imported.load_state_dict({name.removeprefix("filters.0."): value for name, value in skips_part.items()})

    features = torch.randn(2, channels, 32, 32)
    expected = beta * features + alpha[8] * (features - gaussian_blur(features, [15, 15], [5.0, 5.0]))
    for name, (_, alpha_index) in RELEASED_KERNELS.items():
        kernel = released[f"filters.0.{name}"].float()
        expected = expected + alpha[alpha_index] * F.conv2d(features, kernel, padding=1, groups=channels)
    with torch.no_grad():
        assert torch.allclose(imported(features), expected, atol=1e-6)
        assert not torch.allclose(AdaptiveFilter()(features), expected, atol=1e-3)  # the remap matters


def test_the_clear_vae_release_format_round_trips() -> None:
    vae = build_vae("tiny_inpainting")
    skips = _perturbed(ClearVAESkips.from_vae(vae))
    vae_part, skips_part = clear_vae_state_from_release(release_state_from_clear_vae(vae, skips))
    assert vae_part.keys() == vae.state_dict().keys()
    for name, value in skips.state_dict().items():
        assert torch.equal(skips_part[name], value), name


def _perturbed(module: torch.nn.Module, scale: float = 0.02) -> torch.nn.Module:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return module


def _r2r_release(folder: Path) -> tuple[Path, dict[str, torch.nn.Module]]:
    """A tiny R2R release in the official layout: a pipeline with controlnet/, and clear_vae/."""
    pipeline = make_tiny_pipeline(folder / "stable-diffusion-inpainting")
    torch.manual_seed(11)
    controlnet = _perturbed(build_controlnet("tiny_inpainting", conditioning_channels=7, in_channels=4))
    maca = _perturbed(MACABank.from_controlnet(controlnet))
    vae = _perturbed(build_vae("tiny_inpainting"))
    skips = _perturbed(ClearVAESkips.from_vae(vae))
    (pipeline / "controlnet").mkdir()
    config = {"_class_name": "ControlNetModel", **dict(controlnet.config)}
    (pipeline / "controlnet" / "config.json").write_text(json.dumps(config))
    torch.save(
        release_state_from_controller(controlnet, maca),
        pipeline / "controlnet" / "diffusion_pytorch_model.bin",
    )
    (folder / "clear_vae").mkdir()
    levels = len(vae.config.block_out_channels)
    config = {"_class_name": "AutoencoderKL_Skip", **dict(vae.config), "use_skip": True, "training": False}
    config |= {
        "down_block_types": ["DownEncoderSkipBlock2D"] * levels,
        "up_block_types": ["UpDecoderSkipBlock2D"] * levels,
    }
    (folder / "clear_vae" / "config.json").write_text(json.dumps(config))
    released = {name: value.contiguous() for name, value in release_state_from_clear_vae(vae, skips).items()}
    save_file(released, folder / "clear_vae" / "diffusion_pytorch_model.safetensors")
    return folder, {"controlnet": controlnet, "maca": maca, "vae": vae, "clear_vae": skips}


def test_import_r2r_then_harmonize_and_reproduce_table1(
    tmp_path: Path, iharmony4_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, parts = _r2r_release(tmp_path / "region2region")
    checkpoint = tmp_path / "checkpoints" / "r2r_release.ckpt"
    command = ["import-weights", "--from", "r2r", str(source), "--output", str(checkpoint)]
    assert main([*command, "--config", str(REPO_ROOT / "tests" / "configs" / "r2r_iharmony4.yaml")]) == 0
    model = R2R.load_from_checkpoint(checkpoint, map_location="cpu")
    for part, original in parts.items():
        for name, value in original.state_dict().items():
            assert torch.equal(getattr(model, part).state_dict()[name], value), f"{part}.{name}"
    released_unet = UNet2DConditionModel.from_pretrained(source / "stable-diffusion-inpainting" / "unet")
    for name, value in released_unet.state_dict().items():
        assert torch.equal(model.unet.state_dict()[name], value), name
    written = sorted(path.name for path in (tmp_path / "checkpoints").iterdir())
    assert written == ["r2r_release.ckpt", "r2r_release_clear_vae", "r2r_release_controller"]
    assert sorted(path.name for path in (tmp_path / "checkpoints" / "r2r_release_clear_vae").iterdir()) == [
        "skips",
        "vae",
    ]

    result, composite, mask = harmonize_with(checkpoint, tmp_path)
    assert not np.array_equal(result[mask > 0], composite[mask > 0])

    monkeypatch.setattr(reproduce_table1, "REPO", tmp_path)
    row = "R2R (authors' weights)"
    table = ["--data-root", str(iharmony4_root), "--output-dir", str(tmp_path / "results"), "--rows", row]
    assert reproduce_table1.main([*table, "--workers", "0", "--batch-size", "4"]) == 0
    assert json.loads((tmp_path / "results" / "table1.json").read_text())[row]["results"]["all"]["n"] > 0
    assert f"| {row} | R2R Tab. 1 |" in (tmp_path / "results" / "table1.md").read_text()


@pytest.mark.parametrize("problem", ["no clear_vae", "mirrored kernel", "missing MACA"])
def test_a_broken_r2r_release_is_one_clear_line(
    problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _ = _r2r_release(tmp_path / "region2region")
    if problem == "no clear_vae":
        shutil.rmtree(source / "clear_vae")
    elif problem == "mirrored kernel":
        weights = source / "clear_vae" / "diffusion_pytorch_model.safetensors"
        state = load_file(weights)
        state["filters.3.Sobel_x"] = -state["filters.3.Sobel_x"]
        save_file(state, weights)
    else:
        weights = source / "stable-diffusion-inpainting" / "controlnet" / "diffusion_pytorch_model.bin"
        state = torch.load(weights, weights_only=True)
        state.pop("PCCAs.1.mlp.2.bias")
        torch.save(state, weights)
    checkpoint = tmp_path / "r2r.ckpt"
    command = ["import-weights", "--from", "r2r", str(source), "--output", str(checkpoint)]
    capsys.readouterr()
    assert main([*command, "--config", str(REPO_ROOT / "tests" / "configs" / "r2r_iharmony4.yaml")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("harmony: error:") and "\n" not in error
    assert not checkpoint.exists() and not list(tmp_path.glob("r2r_*"))
