"""``harmony import-weights``: the authors' released weights as a harmony checkpoint.

One command per release (``dh``: the unpacked DiffHarmony release; ``--config`` picks another experiment
config than the method's)::

  harmony import-weights --from pih ckpt_g39.pth --output checkpoints/pih.ckpt
  harmony import-weights --from diffharmony dh/base --output checkpoints/diffharmony_release.ckpt
  harmony import-weights --from diffharmony_plusplus dh --output checkpoints/diffharmony_plusplus_release.ckpt
  harmony import-weights --from r2r region2region --output checkpoints/r2r_release.ckpt
  harmony import-weights --from r2r_diff_base diff-base.ckpt --output checkpoints/diffharmony_r2r.ckpt

Each release is loaded strictly (every parameter of the authors' files has a place in harmony's modules
and every module parameter a value) into the model built from the method's experiment config, and
written as a checkpoint that ``harmony harmonize``, ``test``, ``predict`` and ``reproduce-table1`` take.
Parts that harmony keeps in the diffusers format are also written beside the checkpoint: DiffHarmony++'s
Harmony-VAE (``<stem>_harmony_vae/``), R2R's Clear-VAE (``<stem>_clear_vae/``) and controller
(``<stem>_controller/``). How each release's names map onto harmony's:
:mod:`harmony.methods.diffharmony.released_weights`, :mod:`harmony.methods.r2r.released_weights`,
:mod:`harmony.methods.semi_supervised_parametric.released_weights`.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from harmony.commands.arguments import ToolArgumentParser
from harmony.data.io import atomic_path, usual_mode
from harmony.errors import HarmonyInputError, load_strictly

if TYPE_CHECKING:
    import lightning
    import torch

# Lightning and torch are imported where they are used, so that --help and a bad argument answer at once.

REPO_ROOT = Path(__file__).resolve().parents[2]
RELEASES = {
    "diffharmony": "experiments/diffharmony.yaml",
    "diffharmony_plusplus": "experiments/diffharmony_plusplus.yaml",
    "pih": "experiments/semi_supervised_parametric_pih_release.yaml",
    "r2r": "experiments/r2r.yaml",
    "r2r_diff_base": "experiments/diffharmony.yaml",
}
"""Importable releases and the experiment config each one's model is built from."""

SINGLE_FILE_RELEASES = {"pih": "ckpt_g39.pth", "r2r_diff_base": "diff-base.ckpt"}
"""Releases that are one file (the others are folders), with the file's released name."""


def write_folder(folder: Path, write: Callable[[Path], None]) -> None:
    """Fill ``folder`` with ``write(staging)`` in a staging folder beside it, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    staging.chmod(usual_mode(directory=True))
    try:
        write(staging)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_model(config: Path, overrides: list[str], load: bool = True) -> lightning.LightningModule:
    """The model of an experiment config with ``--model...`` overrides (its pretrained weights loaded)."""
    from harmony.lightning_cli import make_cli

    model = make_cli(["--config", str(config), *overrides, "--trainer.logger=false"], run=False).model
    if load and hasattr(model, "load_pretrained"):
        model.load_pretrained()
    return model


def save_checkpoint(model: lightning.LightningModule, release: str, source: Path, output: Path) -> Path:
    """Write ``model`` as a Lightning checkpoint that ``load_from_checkpoint`` and the commands read."""
    import lightning
    import torch

    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "hparams_name": "kwargs",
        "pytorch-lightning_version": lightning.__version__,
        "imported_from": {"release": release, "source": str(source.resolve())},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as temporary:
        torch.save(checkpoint, temporary)
    return output


def import_diffharmony(release: str, source: Path, output: Path, config: Path) -> Path:
    """Import a DiffHarmony or DiffHarmony++ release; returns the checkpoint written.

    Raises:
        HarmonyInputError: The release is incomplete, or a part does not fit the configured model.
    """
    from harmony.methods.diffharmony.released_weights import load_released_condition_vae

    base = source / "base" if (source / "base").is_dir() else source
    if not (base / "unet").is_dir():
        raise HarmonyInputError(source, "not a DiffHarmony release: expected base/unet/ (or unet/) inside")
    overrides = [
        f"--model.init_args.pretrained={base}",
        "--model.init_args.unet_pretrained=null",
        "--model.init_args.vae_pretrained=null",
        "--model.init_args.text_encoder_pretrained=null",
    ]
    if release == "diffharmony_plusplus":
        if not (source / "condition_vae").is_dir():
            raise HarmonyInputError(source, "a DiffHarmony++ release needs condition_vae/ beside base/")
        harmony_vae = output.with_name(f"{output.stem}_harmony_vae")
        write_folder(harmony_vae, load_released_condition_vae(source / "condition_vae").save_pretrained)
        overrides.append(f"--model.init_args.harmony_vae_pretrained={harmony_vae.resolve()}")
    return save_checkpoint(build_model(config, overrides), release, source, output)


def import_r2r(release: str, source: Path, output: Path, config: Path) -> Path:
    """Import R2R's release (``stable-diffusion-inpainting/`` and ``clear_vae/``); returns the checkpoint.

    The Clear-VAE and the controller are also written in harmony's format beside the checkpoint
    (``<stem>_clear_vae/{vae,skips}``, ``<stem>_controller/{controlnet,maca}``).

    Raises:
        HarmonyInputError: The release is incomplete, or a part does not fit the configured model.
    """
    from harmony.methods.r2r.released_weights import load_released_clear_vae, load_released_controller

    pipeline, clear_vae_folder = source / "stable-diffusion-inpainting", source / "clear_vae"
    for folder in (pipeline / "unet", pipeline / "controlnet", clear_vae_folder):
        if not folder.is_dir():
            raise HarmonyInputError(
                source,
                f"not an R2R release: no {folder.relative_to(source)}/ "
                "(expected stable-diffusion-inpainting/ with unet/ and controlnet/, and clear_vae/)",
            )
    vae, skips = load_released_clear_vae(clear_vae_folder)
    controlnet, maca = load_released_controller(pipeline / "controlnet")
    clear_vae = output.with_name(f"{output.stem}_clear_vae")
    controller = output.with_name(f"{output.stem}_controller")

    def write_parts(parts: dict[str, torch.nn.Module]) -> Callable[[Path], None]:
        def write(staging: Path) -> None:
            for name, module in parts.items():
                module.save_pretrained(staging / name)

        return write

    write_folder(clear_vae, write_parts({"vae": vae, "skips": skips}))
    write_folder(controller, write_parts({"controlnet": controlnet, "maca": maca}))
    overrides = [
        "--model.init_args.pretrained=null",
        f"--model.init_args.unet_pretrained={pipeline / 'unet'}",
        "--model.init_args.vae_pretrained=null",
        f"--model.init_args.text_encoder_pretrained={pipeline}",
        "--model.init_args.diffharmony_checkpoint=null",
        f"--model.init_args.clear_vae_pretrained={clear_vae.resolve()}",
        f"--model.init_args.controller_pretrained={controller.resolve()}",
        f"--model.init_args.controlnet.init_args.in_channels={controlnet.config.in_channels}",
    ]
    return save_checkpoint(build_model(config, overrides), release, source, output)


def import_r2r_diff_base(release: str, source: Path, output: Path, config: Path) -> Path:
    """Import R2R's ``diff-base.ckpt`` (DiffHarmony's UNet, LDM names) as a DiffHarmony checkpoint.

    The UNet is renamed by diffusers' own converter (``convert_ldm_unet_checkpoint``) and loaded strictly;
    the VAE and text encoder are the config's pipeline's (``pretrained``). The UNet is also written as a
    diffusers folder, ``<stem>_unet/``, R2R's ``unet_pretrained``.

    Raises:
        HarmonyInputError: The file is unreadable, holds no LDM UNet, or its UNet does not fit.
    """
    import torch
    from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint

    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is a user error here
        raise HarmonyInputError(source, f"cannot read checkpoint ({type(error).__name__}: {error})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    unet_state = {name: value for name, value in state.items() if name.startswith(LDM_UNET_KEY)}
    if not unet_state:
        raise HarmonyInputError(source, f"holds no LDM UNet (no {LDM_UNET_KEY}* weights)")
    unet_folder = output.with_name(f"{output.stem}_unet")
    model = build_model(config, [f"--model.init_args.unet_pretrained={unet_folder.resolve()}"], load=False)
    converted = convert_ldm_unet_checkpoint(unet_state, dict(model.unet.config))
    load_strictly(model.unet, converted, source, "its UNet does not fit the configured one")
    if len(converted) != len(unet_state):
        raise HarmonyInputError(
            source, f"{len(unet_state) - len(converted)} UNet weights have no diffusers name"
        )
    write_folder(unet_folder, model.unet.save_pretrained)
    model.load_pretrained()
    return save_checkpoint(model, release, source, output)


def import_pih(release: str, source: Path, output: Path, config: Path) -> Path:
    """Import adobe/PIH's ``ckpt_g39.pth`` into the released-variant model; returns the checkpoint.

    Raises:
        HarmonyInputError: The file is not a PIH checkpoint or does not fit the configured model.
    """
    from harmony.methods.semi_supervised_parametric.released_weights import load_pih_release

    return save_checkpoint(load_pih_release(source, config), release, source, output)


IMPORTERS = {
    "diffharmony": import_diffharmony,
    "diffharmony_plusplus": import_diffharmony,
    "pih": import_pih,
    "r2r": import_r2r,
    "r2r_diff_base": import_r2r_diff_base,
}


def main(argv: list[str] | None = None) -> int:
    """Run ``harmony import-weights``; returns the exit status."""
    examples = __doc__.split("::", 1)[1].split("\n\n", 2)[1]
    parser = ToolArgumentParser(
        prog="harmony import-weights",
        description="Turn the authors' released weights into a harmony checkpoint, loaded strictly.",
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--from", dest="release", required=True, choices=sorted(RELEASES), help="the release")
    parser.add_argument("source", type=Path, help="the downloaded release (folder, or PIH's .pth file)")
    parser.add_argument("--output", type=Path, required=True, help="the harmony checkpoint to write (.ckpt)")
    parser.add_argument("--config", type=Path, help="experiment config of the model (default: the method's)")
    args = parser.parse_args(argv)
    if not args.source.exists():
        raise HarmonyInputError(args.source, "release not found")
    single_file = args.release in SINGLE_FILE_RELEASES
    if single_file != args.source.is_file():
        expected = f"the file {SINGLE_FILE_RELEASES[args.release]}" if single_file else "a release folder"
        raise HarmonyInputError(args.source, f"the {args.release} release is {expected}")
    config = args.config or REPO_ROOT / RELEASES[args.release]
    if not config.is_file():
        raise HarmonyInputError(config, "config not found")
    written = IMPORTERS[args.release](args.release, args.source, args.output, config)
    print(f"imported the {args.release} release from {args.source} -> {written}")
    return 0
