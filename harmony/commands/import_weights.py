"""``harmony import-weights``: the authors' released weights as a harmony checkpoint.

``harmony import-weights --from diffharmony_plusplus RELEASE --output checkpoints/diffharmony_plusplus.ckpt``
reads the DiffHarmony release (``RELEASE/base/``, a diffusers inpainting pipeline with the trained UNet,
and for DiffHarmony++ ``RELEASE/condition_vae/``, the Harmony-VAE), loads every part strictly into the
method's modules built from its experiment config (``--config``, default ``experiments/<method>.yaml``),
and writes a checkpoint that ``harmony harmonize``, ``test``, ``predict`` and ``reproduce-table1`` take.
DiffHarmony++'s Harmony-VAE is also written in harmony's diffusers format beside the checkpoint
(``<output stem>_harmony_vae/``, the config's ``harmony_vae_pretrained``). How the release's names map
onto harmony's: :mod:`harmony.methods.diffharmony.released_weights`.

The other methods' releases (adobe/PIH's ``ckpt_g39.pth``, R2R's) are not importable yet.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import lightning
import torch

from harmony.data.io import atomic_path
from harmony.errors import HarmonyInputError

REPO_ROOT = Path(__file__).resolve().parents[2]
RELEASES = {
    "diffharmony": "experiments/diffharmony.yaml",
    "diffharmony_plusplus": "experiments/diffharmony_plusplus.yaml",
}
"""Importable releases and the experiment config each one's model is built from."""


def _release_parts(source: Path, release: str) -> tuple[Path, Path | None]:
    base = source / "base" if (source / "base").is_dir() else source
    if not (base / "unet").is_dir():
        raise HarmonyInputError(source, "not a DiffHarmony release: expected base/unet/ (or unet/) inside")
    condition_vae = None
    if release == "diffharmony_plusplus":
        condition_vae = source / "condition_vae"
        if not condition_vae.is_dir():
            raise HarmonyInputError(source, "a DiffHarmony++ release needs condition_vae/ beside base/")
    return base, condition_vae


def _write_harmony_vae(condition_vae: Path, folder: Path) -> None:
    from harmony.methods.diffharmony.released_weights import load_released_condition_vae

    model = load_released_condition_vae(condition_vae)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def import_diffharmony(release: str, source: Path, output: Path, config: Path) -> Path:
    """Import a DiffHarmony or DiffHarmony++ release; returns the checkpoint written.

    Raises:
        HarmonyInputError: The release is incomplete, or a part does not fit the configured model.
    """
    from harmony.cli import make_cli

    base, condition_vae = _release_parts(source, release)
    output.parent.mkdir(parents=True, exist_ok=True)
    overrides = [
        f"--model.init_args.pretrained={base}",
        "--model.init_args.unet_pretrained=null",
        "--model.init_args.vae_pretrained=null",
        "--model.init_args.text_encoder_pretrained=null",
    ]
    if condition_vae is not None:
        harmony_vae = output.with_name(f"{output.stem}_harmony_vae")
        _write_harmony_vae(condition_vae, harmony_vae)
        overrides.append(f"--model.init_args.harmony_vae_pretrained={harmony_vae.resolve()}")
    cli = make_cli(["--config", str(config), *overrides, "--trainer.logger=false"], run=False)
    model = cli.model
    model.load_pretrained()
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "hparams_name": "kwargs",
        "pytorch-lightning_version": lightning.__version__,
        "imported_from": {"release": release, "source": str(source.resolve())},
    }
    with atomic_path(output) as temporary:
        torch.save(checkpoint, temporary)
    return output


def main(argv: list[str] | None = None) -> int:
    """Run ``harmony import-weights``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="harmony import-weights", description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="release", required=True, choices=sorted(RELEASES), help="the release")
    parser.add_argument("source", type=Path, help="the downloaded release folder")
    parser.add_argument("--output", type=Path, required=True, help="the harmony checkpoint to write (.ckpt)")
    parser.add_argument("--config", type=Path, help="experiment config of the model (default: the method's)")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        raise HarmonyInputError(args.source, "release folder not found")
    config = args.config or REPO_ROOT / RELEASES[args.release]
    if not config.is_file():
        raise HarmonyInputError(config, "config not found")
    written = import_diffharmony(args.release, args.source, args.output, config)
    print(f"imported the {args.release} release from {args.source} -> {written}")
    return 0
