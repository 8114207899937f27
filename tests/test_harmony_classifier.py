"""The harmony classifier: labels, the linear probe, weights at fit start, the CLI and ``classify``."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from urllib.error import URLError

import lightning as L
import pytest
import torch
from torchvision.models import WeightsEnum, resnet50

from harmony.cli import main, make_cli
from harmony.data import IHarmony4DataModule, SyntheticHarmonyDataModule
from harmony.methods.diffharmony import HarmonyClassifier
from harmony.methods.diffharmony.harmony_classifier import build_convnet_backbone, build_resnet50_backbone
from tests.conftest import REPO_ROOT

CONFIG = str(REPO_ROOT / "tests" / "configs" / "harmony_classifier_iharmony4.yaml")
TRAINER = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False}


def _args(root: Path, *extra: str) -> list[str]:
    return ["--config", CONFIG, f"--data.init_args.root={root}", *extra]


def _tiny(train_backbone: bool = True) -> HarmonyClassifier:
    torch.manual_seed(0)
    return HarmonyClassifier(
        build_convnet_backbone(width=4, depth=2), train_backbone=train_backbone, image_size=32
    )


@pytest.fixture(scope="module")
def checkpoint(iharmony4_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny classifier trained for 2 steps through ``harmony fit``."""
    run = tmp_path_factory.mktemp("classifier_run")
    extra = ["--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0"]
    assert main(["fit", *_args(iharmony4_root, *extra, f"--trainer.default_root_dir={run}")]) == 0
    (path,) = (run / "checkpoints").glob("*.ckpt")
    return path


def test_composites_are_labelled_one_and_real_images_zero() -> None:
    model = _tiny()
    composite, real = torch.rand(3, 3, 40, 48), torch.rand(3, 3, 40, 48)
    images, labels = model.labelled_images(
        {"composite": composite, "target": real, "mask": torch.ones(3, 1, 40, 48)}
    )
    assert torch.equal(images, torch.cat([composite, real]))
    assert labels.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    # Feature width is read from the backbone: 4 · 2 channels after two stages.
    assert model.probe.in_features == 8
    assert model(images).shape == (6,)  # any input size: resized to image_size
    probabilities = model.predict_proba(images)
    assert probabilities.shape == (6,) and bool(((probabilities >= 0) & (probabilities <= 1)).all())


def test_resnet50_backbone_gives_the_pooled_2048_features() -> None:
    model = HarmonyClassifier(build_resnet50_backbone("random"), image_size=64)
    assert model.probe.in_features == 2048 and model.probe.out_features == 1
    assert not any(p.requires_grad for p in model.backbone.parameters())  # linear probe by default


def test_one_training_step_changes_the_probe_only(iharmony4_root: Path) -> None:
    model = _tiny(train_backbone=False)
    probe = {name: p.detach().clone() for name, p in model.probe.state_dict().items()}
    backbone = {name: p.detach().clone() for name, p in model.backbone.state_dict().items()}
    data = IHarmony4DataModule(root=iharmony4_root, image_size=32, batch_size=4, augment=False)
    L.Trainer(max_steps=1, limit_val_batches=0, enable_checkpointing=False, **TRAINER).fit(
        model, datamodule=data
    )
    assert any(not torch.equal(probe[name], p) for name, p in model.probe.state_dict().items())
    # Frozen and in eval mode: not even the batch-norm statistics move.
    assert all(torch.equal(backbone[name], p) for name, p in model.backbone.state_dict().items())


def test_imagenet_weights_load_at_fit_start_or_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    pretrained = resnet50(weights=None).state_dict()
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, progress=True: pretrained)
    model = HarmonyClassifier(image_size=64)
    assert not torch.equal(model.backbone.conv1.weight, pretrained["conv1.weight"])  # none in __init__
    model.on_fit_start()
    assert torch.equal(model.backbone.conv1.weight, pretrained["conv1.weight"])

    def offline(self: WeightsEnum, progress: bool = True) -> dict:
        raise URLError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    model = HarmonyClassifier(image_size=64)
    before = model.backbone.conv1.weight.detach().clone()
    with pytest.warns(UserWarning, match="random weights"):
        model.on_fit_start()
    assert torch.equal(model.backbone.conv1.weight, before)

    restored = HarmonyClassifier(image_size=64)
    restored.on_load_checkpoint({})
    restored.on_fit_start()  # weights from a checkpoint are kept: no download is attempted
    assert not torch.equal(restored.backbone.conv1.weight, pretrained["conv1.weight"])


def test_fit_and_test_through_the_cli(iharmony4_root: Path) -> None:
    assert main(["fit", *_args(iharmony4_root, "--trainer.fast_dev_run=true")]) == 0
    cli = make_cli([*_args(iharmony4_root, "--trainer.fast_dev_run=true")], run=False)
    (results,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert set(results) == {"test/accuracy", "test/auroc"}
    assert 0 <= results["test/auroc"] <= 1


def test_test_from_a_checkpoint(iharmony4_root: Path, checkpoint: Path) -> None:
    assert main(["test", *_args(iharmony4_root, f"--ckpt_path={checkpoint}")]) == 0


def test_classify_writes_one_probability_per_image(
    iharmony4_root: Path, checkpoint: Path, tmp_path: Path
) -> None:
    images = iharmony4_root / "HCOCO" / "composite_images"
    output = tmp_path / "out" / "scores.csv"
    command = ["classify", "--checkpoint", str(checkpoint), "--images", str(images), "--output", str(output)]
    assert main([*command, "--batch-size", "3", "--device", "cpu"]) == 0
    with output.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(Path(row["path"]).name for row in rows) == sorted(p.name for p in images.iterdir())
    assert all(0.0 <= float(row["p_composite"]) <= 1.0 for row in rows)
    assert [p.name for p in output.parent.iterdir()] == ["scores.csv"]  # no temporary file left


@pytest.mark.parametrize("problem", ["missing", "corrupt", "not a classifier", "empty folder"])
def test_classify_reports_bad_input_in_one_line(
    problem: str, checkpoint: Path, iharmony4_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = iharmony4_root / "HCOCO" / "composite_images"
    if problem == "missing":
        path = tmp_path / "missing.ckpt"
    elif problem == "corrupt":
        path = tmp_path / "corrupt.ckpt"
        path.write_bytes(b"not a checkpoint")
    elif problem == "not a classifier":
        path = tmp_path / "other.ckpt"
        torch.save({"hyper_parameters": {"_class_path": "harmony.methods.Composite"}}, path)
    else:
        path, images = checkpoint, tmp_path / "empty"
        images.mkdir()
    output = tmp_path / "scores.csv"
    assert (
        main(["classify", "--checkpoint", str(path), "--images", str(images), "--output", str(output)]) == 2
    )
    error = capsys.readouterr().err.strip()
    assert error.startswith("harmony: error:") and "\n" not in error
    assert not output.exists()


@pytest.mark.slow
@pytest.mark.xfail(
    reason="not reached on CPU: test AUROC 0.55 (about 30 s on 2 cores); from scratch, nine training "
    "photos do not teach a small CNN inharmony: with jitter and crops it does not fit the training split "
    "(train AUROC 0.52-0.56, also at 32x5 channels, 20-30 epochs, max pooling), without them it memorises "
    "it (train 0.89, test 0.51)",
    strict=False,
)
def test_small_classifier_learns_on_synthetic_harmony(tmp_path: Path) -> None:
    """A small CNN trained from scratch on SyntheticHarmony (CPU) tells held-out composites from reals.

    The test photos are never trained on, and the scene colour jitter changes composite and real image
    alike, so the classifier must learn the foreground's mismatch with its background, not the photos.
    """
    started = time.monotonic()
    L.seed_everything(0)
    model = HarmonyClassifier(
        build_convnet_backbone(width=16, depth=4),
        optimizer=lambda parameters: torch.optim.AdamW(parameters, lr=2e-3, weight_decay=1e-2),
        train_backbone=True,
        image_size=64,
    )
    data = SyntheticHarmonyDataModule(
        root=tmp_path / "synthetic", seed=0, num_train=960, num_val=32, num_test=96, source_size=64,
        image_size=64, batch_size=32, augment=True, scene_color_jitter=1.0,
    )  # fmt: skip
    trainer = L.Trainer(max_epochs=10, limit_val_batches=0, enable_checkpointing=False, **TRAINER)
    trainer.fit(model, datamodule=data)
    (results,) = trainer.test(model, datamodule=data, verbose=False)
    print(f"test AUROC {results['test/auroc']:.3f}, accuracy {results['test/accuracy']:.3f}, "
          f"{time.monotonic() - started:.0f} s")  # fmt: skip
    assert results["test/auroc"] >= 0.85
