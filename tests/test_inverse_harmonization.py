"""Inverse harmonization (DiffHarmony++ Sec. 4.1): role swap, configs, and ``harmony generate-composites``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harmony.cli import main, make_cli
from harmony.data import types as keys
from harmony.data.datasets import TripletDataset
from harmony.data.records import list_iharmony4
from harmony.methods.diffharmony import InverseHarmonization, InverseHarmonyVAE
from harmony.methods.diffharmony.inverse_harmonization import swap_roles
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "tests" / "configs"
INVERSE = str(CONFIGS / "inverse_harmonization_iharmony4.yaml")
INVERSE_VAE = str(CONFIGS / "inverse_harmony_vae_iharmony4.yaml")


def _args(config: str, root: Path, *extra: str) -> list[str]:
    return ["--config", config, f"--data.init_args.root={root}", *extra]


def _batch(root: Path, split: str = "test", eval_size: int | None = 16) -> dict:
    dataset = TripletDataset(list_iharmony4(root, split), 32, eval_size=eval_size)
    samples = [dataset[i] for i in range(2)]
    return {
        name: torch.stack([s[name] for s in samples]) if torch.is_tensor(samples[0][name]) else [
            s[name] for s in samples
        ]
        for name in samples[0]
    }  # fmt: skip


def test_swap_roles_exchanges_images_copies_and_paths(iharmony4_root: Path) -> None:
    batch = _batch(iharmony4_root)
    swapped = swap_roles(batch)
    for first, second in (
        (keys.COMPOSITE, keys.TARGET),
        (keys.EVAL_COMPOSITE, keys.EVAL_TARGET),
        (keys.COMPOSITE_PATH, keys.TARGET_PATH),
    ):
        assert swapped[first] is batch[second] and swapped[second] is batch[first]
    assert swapped[keys.MASK] is batch[keys.MASK] and swapped[keys.NAME] is batch[keys.NAME]
    assert Path(swapped[keys.COMPOSITE_PATH][0]).parent.name == "real_images"
    without_target = {keys.COMPOSITE: batch[keys.COMPOSITE], keys.MASK: batch[keys.MASK]}
    assert swap_roles(without_target) is without_target  # already the inverse input (a real image)


def test_inverse_model_conditions_on_the_real_image_and_denoises_the_composite(iharmony4_root: Path) -> None:
    cli = make_cli(_args(INVERSE, iharmony4_root, "--trainer.fast_dev_run=true"), run=False)
    model = cli.model
    assert isinstance(model, InverseHarmonization)
    batch = _batch(iharmony4_root, "train", eval_size=None)
    encoded: list[torch.Tensor] = []
    original_encode = model.encode

    def recording_encode(images: torch.Tensor, generator: object = None) -> torch.Tensor:
        encoded.append(images)
        return original_encode(images, generator)

    model.encode = recording_encode  # type: ignore[method-assign]
    model.training_step(batch, 0)
    # DiffHarmony's training encodes the image to denoise first, then its condition.
    assert torch.equal(encoded[0], batch[keys.COMPOSITE]) and torch.equal(encoded[1], batch[keys.TARGET])


def test_inverse_harmony_vae_reconstructs_the_composite_given_the_real_image(iharmony4_root: Path) -> None:
    cli = make_cli(_args(INVERSE_VAE, iharmony4_root, "--trainer.fast_dev_run=true"), run=False)
    model = cli.model
    assert isinstance(model, InverseHarmonyVAE)
    batch = _batch(iharmony4_root, "train", eval_size=None)
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    forward = model.harmony_vae.forward

    def recording_forward(images: torch.Tensor, composite: torch.Tensor, *rest: object) -> object:
        calls.append((images, composite))
        return forward(images, composite, *rest)

    model.harmony_vae.forward = recording_forward  # type: ignore[method-assign]
    model.training_step(batch, 0)
    reconstructed, condition = calls[0]
    assert torch.equal(reconstructed, batch[keys.COMPOSITE] * 2 - 1)
    assert torch.equal(condition, batch[keys.TARGET] * 2 - 1)


@pytest.mark.parametrize(
    "config", [INVERSE, INVERSE_VAE], ids=["inverse_harmonization", "inverse_harmony_vae"]
)
def test_fit_test_predict_under_fast_dev_run(config: str, iharmony4_root: Path, tmp_path: Path) -> None:
    predictions = tmp_path / "predictions"
    extra = ["--trainer.fast_dev_run=true", f"--model.init_args.predictions_dir={predictions}"]
    cli = make_cli(_args(config, iharmony4_root, *extra), run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (results,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert np.isfinite(results["test/all/mse"])
    cli.trainer.predict(cli.model, datamodule=cli.datamodule)
    written = sorted(predictions.glob("*.png"))
    assert written
    records = {record.name: record for record in list_iharmony4(iharmony4_root, "test")}
    for path in written:
        # Predicted from the real image: its background is the real image's (the file's, bit for bit).
        record = records[path.stem]
        real = np.asarray(Image.open(record.target).convert("RGB"))
        background = np.asarray(Image.open(record.mask).convert("L")) == 0
        np.testing.assert_array_equal(np.asarray(Image.open(path))[background], real[background])


def _generate(checkpoint: Path, root: Path, output: Path, *extra: str) -> int:
    command = ["generate-composites", "--checkpoint", str(checkpoint), "--root", str(root)]
    return main(
        [*command, "--output", str(output), "--candidates", "2", "--device", "cpu", "--no-progress", *extra]
    )


def test_generate_composites_writes_an_iharmony4_tree(
    inverse_checkpoint: Path, iharmony4_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "generated"
    assert _generate(inverse_checkpoint, iharmony4_root, output, "--subsets", "HCOCO", "HFlickr") == 0
    records = list_iharmony4(output, "train")
    sources = [r for r in list_iharmony4(iharmony4_root, "train") if r.subset in ("HCOCO", "HFlickr")]
    assert len(records) == 2 * len({(r.subset, r.mask.stem) for r in sources})
    assert sorted({r.name.rsplit("_", 1)[1] for r in records}) == ["0", "1"]
    for record in records:
        source_real = iharmony4_root / record.subset / "real_images" / record.target.name
        real = np.asarray(Image.open(record.target).convert("RGB"))
        assert record.target.read_bytes() == source_real.read_bytes()  # the real image, copied
        composite = np.asarray(Image.open(record.composite).convert("RGB"))
        background = np.asarray(Image.open(record.mask).convert("L")) == 0
        assert composite.shape == real.shape  # at the real image's own size
        np.testing.assert_array_equal(composite[background], real[background])
    first, second = (np.asarray(Image.open(r.composite)) for r in records[:2])
    assert not np.array_equal(first, second)  # two seeds, two candidates
    manifest = json.loads((output / "generation.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["composites"] == len(records)
    assert not list(output.rglob(".*"))  # no temporary file left

    assert main(["check-data", "--root", str(output), "--dataset", "generated", "--split", "train"]) == 0
    capsys.readouterr()
    assert (
        main(["stats", "--root", str(output), "--split", "train", "--plot", str(tmp_path / "cdf.png")]) == 0
    )
    assert "HCOCO" in capsys.readouterr().out and (tmp_path / "cdf.png").stat().st_size > 0


def test_generate_composites_is_seeded_batch_independent_and_resumes(
    inverse_checkpoint: Path, iharmony4_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one, three = tmp_path / "batch1", tmp_path / "batch3"
    subsets = ["--subsets", "HFlickr", "Hday2night"]
    assert _generate(inverse_checkpoint, iharmony4_root, one, *subsets, "--batch-size", "1") == 0
    assert _generate(inverse_checkpoint, iharmony4_root, three, *subsets, "--batch-size", "3") == 0
    files = sorted(p.relative_to(one) for p in one.rglob("*.png"))
    assert files == sorted(p.relative_to(three) for p in three.rglob("*.png"))
    for relative in files:
        # The same noise per pair; batched convolutions only round differently (at most one level).
        batched = np.asarray(Image.open(three / relative)).astype(int)
        assert np.abs(np.asarray(Image.open(one / relative)).astype(int) - batched).max() <= 1

    # An interrupted run: one candidate and the list are missing; running again makes only that one.
    composites = [path for path in files if path.parent.name == "composite_images"]
    removed, kept = one / composites[-1], one / composites[0]
    mask = next(one / path for path in files if path.parent.name == "masks")
    expected, kept_time = removed.read_bytes(), kept.stat().st_mtime_ns
    removed.unlink()
    mask.unlink()
    (one / "IHD_train.txt").unlink()
    capsys.readouterr()
    assert _generate(inverse_checkpoint, iharmony4_root, one, *subsets, "--batch-size", "2") == 0
    assert "(1 generated now)" in capsys.readouterr().out
    assert removed.read_bytes() == expected and kept.stat().st_mtime_ns == kept_time
    assert (one / "IHD_train.txt").is_file() and mask.is_file()


@pytest.mark.parametrize(
    "problem", ["other settings", "foreign folder", "forward model", "no source", "bad size"]
)
def test_generate_composites_refuses_bad_input_in_one_line(
    problem: str,
    inverse_checkpoint: Path,
    iharmony4_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = tmp_path / "generated"
    extra: list[str] = ["--subsets", "Hday2night"]
    checkpoint = inverse_checkpoint
    if problem == "other settings":
        assert _generate(checkpoint, iharmony4_root, output, *extra) == 0
        extra += ["--seed", "5"]
    elif problem == "foreign folder":
        output.mkdir()
        (output / "notes.txt").write_text("mine")
    elif problem == "forward model":
        checkpoint = tmp_path / "forward.ckpt"
        torch.save(
            {"hyper_parameters": {"_class_path": "harmony.methods.diffharmony.DiffHarmony"}}, checkpoint
        )
    elif problem == "bad size":
        extra += ["--size", "21"]
    capsys.readouterr()
    if problem == "no source":
        status = main(["generate-composites", "--checkpoint", str(checkpoint), "--output", str(output)])
    else:
        status = _generate(checkpoint, iharmony4_root, output, *extra)
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("harmony: error:") and "\n" not in error


def test_generate_composites_from_image_and_mask_folders(inverse_checkpoint: Path, tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for name in ("p1", "p2"):
        Image.fromarray(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(images / f"{name}.jpg")
        mask = np.zeros((36, 44), np.uint8)
        mask[8:24, 10:30] = 255
        Image.fromarray(mask).save(masks / f"{name}.png")  # one mask per image: mask 1
    output = tmp_path / "generated"
    command = ["generate-composites", "--checkpoint", str(inverse_checkpoint), "--images", str(images)]
    command += ["--masks", str(masks), "--output", str(output), "--candidates", "1", "--no-progress"]
    assert main([*command, "--subset", "HPeople", "--device", "cpu"]) == 0
    names = sorted(r.name for r in list_iharmony4(output, "train"))
    assert names == ["p1_1_0", "p2_1_0"]
    assert (output / "HPeople" / "masks" / "p1_1.png").is_file()
