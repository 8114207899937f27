from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import CombinedLoader
from PIL import Image
from torch.utils.data import DataLoader

from harmony.cli import main, make_cli
from harmony.data import types as keys
from harmony.data.composites import OpenCVInpainter, bounding_box, dilate
from harmony.data.real_composites import (
    BACKGROUND,
    REAL,
    RETOUCHED_BACKGROUND,
    RETOUCHED_FOREGROUND,
    SUPERVISED,
    UNSUPERVISED,
    RealCompositeDataset,
    RetouchPairsDataset,
)
from harmony.data.records import TripletRecord, list_matched_folders
from harmony.methods.semi_supervised_parametric import (
    ConvEncoder,
    CurvePredictor,
    MaskedStatisticsEncoder,
    SemiSupervisedParametric,
    ShadingUNet,
    UNetDiscriminatorSN,
)
from harmony.methods.semi_supervised_parametric.any_resolution import curves_to_cube
from harmony.methods.semi_supervised_parametric.rgb_curves import apply_curves
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "tests" / "configs"


def tiny_model(
    shading: bool = True, discriminator: bool = False, background: bool = True, size: int = 32
) -> SemiSupervisedParametric:
    stack = 7 if background else 4
    return SemiSupervisedParametric(
        curve_predictor=CurvePredictor(ConvEncoder(stack, [8, 16])),
        shading_net=ShadingUNet(stack + 3, 4, [1, 2, 2, 2], 4, 3) if shading else None,
        discriminator=UNetDiscriminatorSN(3, 4) if discriminator else None,
        generator_optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
        discriminator_optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
        low_resolution=size,
        use_background_input=background,
    )


def randomise_curves(model: SemiSupervisedParametric, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    head = model.curve_predictor.head
    with torch.no_grad():
        head.bias.copy_(torch.randn(head.bias.shape, generator=generator) * 0.15)
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.01)


def randomise_shading(model: SemiSupervisedParametric, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = model.shading_net.to_map.weight
        weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)


def image_and_mask(height: int = 45, width: int = 67, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    distance = np.hypot((yy - height / 2) / (height / 3), (xx - width / 2) / (width / 3))
    mask = np.clip(1.5 - distance, 0, 1).astype(np.float32)  # soft edge, exact zeros outside
    return image, mask


# --- the parametric model ------------------------------------------------------------------------------
def test_identity_initialised_curves_leave_images_unchanged() -> None:
    model = tiny_model(shading=False).eval()
    images = torch.rand(2, 3, 32, 32)
    curves = model.curve_predictor(torch.rand(2, 7, 32, 32))
    torch.testing.assert_close(apply_curves(images, curves), images, atol=1e-6, rtol=0)
    composite, mask = image_and_mask()
    np.testing.assert_array_equal(model.harmonize_image(composite, mask), composite)
    # Every knot, the end points on the [0, 1] bounds included, can move away from the identity.
    (curves * torch.randn_like(curves)).sum().backward()
    assert (model.curve_predictor.head.bias.grad != 0).all()


def read_cube(text: str) -> np.ndarray:
    """A minimal, independent .cube reader: returns the LUT as table[b, g, r] -> (r, g, b)."""
    size, rows = None, []
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#") or parts[0] in ("TITLE", "DOMAIN_MIN", "DOMAIN_MAX"):
            continue
        if parts[0] == "LUT_3D_SIZE":
            size = int(parts[1])
            continue
        rows.append([float(p) for p in parts])
    assert size is not None and len(rows) == size**3
    return np.asarray(rows).reshape(size, size, size, 3)


def apply_cube(table: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of an ``H×W×3`` image in ``[0, 1]`` through ``table[b, g, r]``."""
    size = table.shape[0]
    position = np.clip(image, 0, 1) * (size - 1)
    low = np.minimum(np.floor(position).astype(int), size - 2)
    t = position - low
    out = np.zeros_like(image, dtype=np.float64)
    for dr in (0, 1):
        for dg in (0, 1):
            for db in (0, 1):
                weight = (
                    (t[..., 0] if dr else 1 - t[..., 0])
                    * (t[..., 1] if dg else 1 - t[..., 1])
                    * (t[..., 2] if db else 1 - t[..., 2])
                )
                out += weight[..., None] * table[low[..., 2] + db, low[..., 1] + dg, low[..., 0] + dr]
    return out


@pytest.mark.parametrize("lut_size", [32, 63])
def test_exported_cube_reproduces_the_curves(lut_size: int) -> None:
    model = tiny_model(shading=False).eval()
    randomise_curves(model)
    composite, mask = image_and_mask()
    adjustments = model.estimate_adjustments(composite, mask)
    assert not np.allclose(adjustments.curves, np.linspace(0, 1, 32)[None].repeat(3, 0), atol=0.01)
    table = read_cube(curves_to_cube(adjustments.curves, lut_size))
    image = np.random.default_rng(1).random((40, 50, 3))
    curves = torch.from_numpy(adjustments.curves)[None]
    expected = apply_curves(torch.from_numpy(image).permute(2, 0, 1)[None].float(), curves)
    expected = expected[0].permute(1, 2, 0).numpy()
    assert np.abs(apply_cube(table, image) - expected).max() < 1 / 255
    # And the module's full-resolution output inside the mask is exactly the curve applied to the pixel.
    output = model.harmonize_image(composite, mask)
    inside = mask == 1
    via_lut = apply_cube(table, composite[inside].astype(np.float64) / 255)
    assert np.abs(output[inside] / 255.0 - via_lut).max() <= 1 / 255 + 1e-6


def test_background_is_bit_identical_at_full_resolution() -> None:
    model = tiny_model().eval()
    randomise_curves(model)
    randomise_shading(model)
    composite, mask = image_and_mask(301, 203)
    output = model.harmonize_image(composite, mask)
    assert output.shape == composite.shape and output.dtype == np.uint8
    np.testing.assert_array_equal(output[mask == 0], composite[mask == 0])
    assert (
        np.abs(output[mask == 1].astype(int) - composite[mask == 1]).mean() > 2
    )  # the foreground did change


def test_shading_map_has_no_detail_finer_than_its_grid() -> None:
    torch.manual_seed(0)
    net = ShadingUNet(10, 2, [1, 2, 2, 2, 2, 2, 2, 2], map_downsampling=8, correction_kernel_size=7)
    with torch.no_grad():
        net.to_map.weight.normal_(std=0.5)
    inputs = torch.rand(1, 10, 512, 512)
    yy, xx = torch.meshgrid(torch.arange(512), torch.arange(512), indexing="ij")
    inputs[:, :3] = ((yy + xx) % 2).float()  # all image energy at the highest frequency
    with torch.no_grad():
        raw = net.predict_map(inputs)
        gain = net(inputs)
    assert raw.shape[-2:] == (64, 64)
    assert 0.5 <= gain.min() and gain.max() <= 1
    logits = torch.logit((gain[0, 0].double() - 0.5) / 0.5).numpy()
    power = np.abs(np.fft.fft2(logits - logits.mean())) ** 2
    frequency = np.abs(np.fft.fftfreq(512) * 512)
    radius = np.maximum(frequency[None, :], frequency[:, None])
    # Above twice the 64-grid's Nyquist frequency only the bilinear upsampling's faint residue remains.
    assert power[radius > 64].sum() / power.sum() < 0.02
    # However the correction convolution is trained, the only path from the 512x512 input to the gain
    # is the 64x64 map, bilinear upsampling and that one convolution (recomputed here independently).
    with torch.no_grad():
        net.correction.weight.normal_(std=0.2)
        gain = net(inputs)
        upsampled = F.interpolate(raw, size=(512, 512), mode="bilinear", align_corners=False)
        corrected = F.conv2d(
            F.pad(upsampled, (3, 3, 3, 3), mode="replicate"), net.correction.weight, net.correction.bias
        )
    torch.testing.assert_close(gain, 0.5 + 0.5 * torch.sigmoid(corrected))


# --- training ----------------------------------------------------------------------------------------------
def supervised_batch(size: int = 32, count: int = 2, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(count, 3, size, size, generator=generator)
    mask = torch.zeros(count, 1, size, size)
    mask[..., 8:24, 8:24] = 1
    composite = target * (1 - mask) + (target * 0.6) * mask
    return {keys.COMPOSITE: composite, keys.MASK: mask, keys.TARGET: target}


def unsupervised_batch(size: int = 32, count: int = 2, seed: int = 1) -> dict:
    batch = supervised_batch(size, count, seed)
    target = batch.pop(keys.TARGET)
    return {**batch, BACKGROUND: target * (1 - batch[keys.MASK]), REAL: target}


def test_stream_sampling_is_balanced() -> None:
    both = {SUPERVISED: "s", UNSUPERVISED: "u"}
    streams = [SemiSupervisedParametric.select_stream(both, index)[0] for index in range(1001)]
    assert abs(streams.count(SUPERVISED) - streams.count(UNSUPERVISED)) <= 1
    assert all(a != b for a, b in itertools.pairwise(streams))  # strictly alternating
    plain = supervised_batch()
    assert SemiSupervisedParametric.select_stream(plain, 1) == (SUPERVISED, plain)


def test_one_manual_step_updates_generator_and_discriminator(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_model(discriminator=True)
    loader = CombinedLoader(
        {
            SUPERVISED: DataLoader([supervised_batch()], batch_size=None),
            UNSUPERVISED: DataLoader([unsupervised_batch()], batch_size=None),
        },
        mode="max_size_cycle",
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = Trainer(
        accelerator="cpu",
        max_steps=-1,
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, train_dataloaders=loader)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("curve_predictor.") for name in changed)
    assert any(name.startswith("shading_net.") for name in changed)
    assert any(name.startswith("discriminator.") for name in changed)
    assert trainer.global_step == 2  # one generator and one discriminator optimizer step
    logged = trainer.callback_metrics
    assert {"train/l1", "train/d_loss", "train/supervised/g_adversarial"} <= set(logged)


def test_losses_follow_equations_2_to_4() -> None:
    model = tiny_model(discriminator=True)
    captured: dict[str, torch.Tensor] = {}

    class FakeOptimizer:
        def zero_grad(self) -> None: ...
        def step(self) -> None: ...

    model.optimizers = lambda: (FakeOptimizer(), FakeOptimizer())  # type: ignore[method-assign]
    model.toggled_optimizer = lambda optimizer: torch.enable_grad()  # type: ignore[method-assign]
    model.manual_backward = lambda loss: captured.setdefault(f"loss{len(captured)}", loss.detach())  # type: ignore[method-assign]
    model.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    model.brightness_jitter = 0.0
    batch = supervised_batch()
    with torch.no_grad():
        model.discriminator.to_logits.weight.zero_()
        model.discriminator.to_logits.bias.fill_(0.3)  # D outputs a constant logit 0.3
    model.training_step(batch, 0)
    output = model.harmonize(batch)
    l1 = F.l1_loss(output, batch[keys.TARGET])
    adversarial = F.softplus(torch.tensor(-0.3))  # -log sigmoid(0.3): the generator wants "real"
    torch.testing.assert_close(captured["loss0"], 0.92 * l1 + 0.08 * adversarial, rtol=1e-4, atol=1e-6)
    mask = batch[keys.MASK]
    real_term = F.softplus(torch.tensor(-0.3))
    fake_term = (mask * F.softplus(torch.tensor(0.3)) + (1 - mask) * F.softplus(torch.tensor(-0.3))).mean()
    torch.testing.assert_close(captured["loss1"], real_term + fake_term, rtol=1e-4, atol=1e-6)
    captured.clear()
    model.training_step({SUPERVISED: batch, UNSUPERVISED: unsupervised_batch()}, 1)
    torch.testing.assert_close(
        captured["loss0"], 0.08 * adversarial, rtol=1e-4, atol=1e-6
    )  # stream 2: L_G only


def test_harmonious_fraction_trains_on_real_images_as_inputs() -> None:
    model = tiny_model(shading=False)
    model.brightness_jitter, model.harmonious_fraction = 0.0, 1.0
    seen: list[torch.Tensor] = []
    model._generator_only_step = lambda data: seen.append(data[keys.COMPOSITE])  # type: ignore[method-assign]
    batch = supervised_batch()
    model.training_step(batch, 0)
    torch.testing.assert_close(seen[0], batch[keys.TARGET])
    model.harmonious_fraction = 0.0
    model.training_step(batch, 0)
    torch.testing.assert_close(seen[1], batch[keys.COMPOSITE])
    with pytest.raises(ValueError, match="harmonious_fraction"):
        SemiSupervisedParametric(CurvePredictor(ConvEncoder(7, [8])), harmonious_fraction=1.5)


def test_foreground_mse_loss_is_the_mean_of_per_image_fmse() -> None:
    model = tiny_model(shading=False)
    model.reconstruction_loss = "foreground_mse"
    batch = supervised_batch()
    batch[keys.MASK][1, :, 8:24, 8:24] = 0
    batch[keys.MASK][1, :, 0:2, 0:2] = 1  # a tiny foreground counts as much as a large one
    output = torch.rand_like(batch[keys.TARGET])
    expected = []
    for index in range(2):
        inside = batch[keys.MASK][index, 0] > 0
        expected.append(((output[index] - batch[keys.TARGET][index]) ** 2)[:, inside].mean())
    torch.testing.assert_close(model.reconstruction(output, batch), torch.stack(expected).mean())
    model.reconstruction_loss = "l1"
    torch.testing.assert_close(model.reconstruction(output, batch), F.l1_loss(output, batch[keys.TARGET]))


def test_masked_statistics_encoder_describes_a_tiny_foreground_as_fully_as_a_large_one() -> None:
    torch.manual_seed(0)
    encoder = MaskedStatisticsEncoder(7, bins=8, channels=(8, 8), out_features=16).eval()
    image = torch.rand(1, 3, 64, 64) * 0.5
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 30:33, 30:33] = 1  # 0.2 % of the image
    stack = torch.cat([image, image * (1 - mask), mask], dim=1)
    brighter = stack.clone()
    brighter[:, :3] = stack[:, :3] + 0.4 * mask
    with torch.no_grad():
        statistics = encoder._region_statistics(stack[:, :3], mask)
        moved = encoder._region_statistics(brighter[:, :3], mask)
        # The foreground's mean rises by the full 0.4, undiluted by the 99.8 % of background.
        means = moved.view(1, 3, -1)[..., -2] - statistics.view(1, 3, -1)[..., -2]
        torch.testing.assert_close(means, torch.full_like(means, 0.4), atol=1e-5, rtol=0)
        histograms = statistics.view(1, 3, -1)[..., :8]
        torch.testing.assert_close(histograms.sum(-1), torch.ones(1, 3))
        assert encoder(stack).shape == (1, 16)
        assert not torch.allclose(encoder(stack), encoder(brighter))


# --- data ---------------------------------------------------------------------------------------------
def write_photos(
    root: Path,
    count: int,
    size: tuple[int, int] = (40, 48),
    seed: int = 0,
    folders: tuple[str, ...] = ("images",),
) -> None:
    rng = np.random.default_rng(seed)
    height, width = size
    for folder in (*folders, "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        yy, xx = np.mgrid[0:height, 0:width]
        photo = np.clip(rng.uniform(40, 200, 3) + yy[..., None] * rng.uniform(-2, 2, 3), 0, 255).astype(
            np.uint8
        )
        mask = np.zeros((height, width), np.uint8)
        top, left = rng.integers(4, height // 2), rng.integers(4, width // 2)
        mask[top : top + height // 3, left : left + width // 3] = 255
        for number, folder in enumerate(folders):
            variant = np.clip(photo.astype(int) + 25 * number, 0, 255).astype(np.uint8)
            Image.fromarray(variant).save(root / folder / f"p{index:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"p{index:02d}.png")


class CountingInpainter(OpenCVInpainter):
    calls = 0

    def __call__(self, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
        CountingInpainter.calls += 1
        return super().__call__(image, hole)


def test_real_composites_follow_equations_5_and_6_and_cache_the_inpainting(tmp_path: Path) -> None:
    write_photos(tmp_path / "real", 3)
    records = list_matched_folders(tmp_path / "real" / "images", tmp_path / "real" / "masks")
    dataset = RealCompositeDataset(
        records, 32, CountingInpainter(), tmp_path / "cache", dilation=3, max_rotation=20
    )
    dataset.prepare()
    assert CountingInpainter.calls == 3 and len(list((tmp_path / "cache").glob("*.png"))) == 3
    torch.manual_seed(0)
    for index in range(len(dataset)):
        sample = dataset[index]
        image_i, mask_i = dataset.load(index)
        background = dataset.inpainted_background(index)
        # (a few px away from the binarised mask: the resized, warped object has a soft edge.)
        outside = ~dilate(sample[keys.MASK][0].numpy(), 3)
        composite = (sample[keys.COMPOSITE].permute(1, 2, 0).numpy() * 255).round()
        # Eq. 5: outside the pasted object, the composite is photo i's inpainted background...
        assert np.abs(composite[outside] - background[outside]).max() <= 1
        # ...and the pasted object lies within photo i's object box.
        x0, y0, x1, y1 = bounding_box(mask_i)
        ys, xs = np.nonzero(sample[keys.MASK][0].numpy())
        assert xs.min() >= x0 - 1 and xs.max() <= x1 + 1 and ys.min() >= y0 - 1 and ys.max() <= y1 + 1
        # Eq. 6: the real class is photo i's own object on its inpainted background.
        real = (sample[REAL].permute(1, 2, 0).numpy() * 255).round()
        assert np.abs(real[mask_i == 1] - image_i[mask_i == 1]).max() <= 1
        assert np.abs(real[mask_i == 0] - background[mask_i == 0]).max() <= 1
        np.testing.assert_allclose(sample[BACKGROUND].permute(1, 2, 0).numpy(), background / 255, atol=1e-6)
    assert CountingInpainter.calls == 3  # cached: never recomputed


def test_retouch_pairs_give_foreground_and_background_retouched_composites(tmp_path: Path) -> None:
    write_photos(tmp_path, 1, folders=("before", "after"))
    records = [
        TripletRecord(
            tmp_path / "before/p00.png",
            tmp_path / "masks/p00.png",
            tmp_path / "after/p00.png",
            "p00",
            "retouch",
        )
    ]
    dataset = RetouchPairsDataset(records, 32)
    assert len(dataset) == 2
    before, after = (np.asarray(Image.open(tmp_path / f"{f}/p00.png")) for f in ("before", "after"))
    mask = np.asarray(Image.open(tmp_path / "masks/p00.png")) > 127
    for index, subset in ((0, RETOUCHED_FOREGROUND), (1, RETOUCHED_BACKGROUND)):
        composite, _, target = dataset.load(index)
        inside, outside, expected_target = (
            (after, before, before) if subset == RETOUCHED_FOREGROUND else (before, after, after)
        )
        np.testing.assert_array_equal(composite[mask], inside[mask])
        np.testing.assert_array_equal(composite[~mask], outside[~mask])
        np.testing.assert_array_equal(target, expected_target)
        assert dataset[index][keys.SUBSET] == subset


# --- through the CLI ----------------------------------------------------------------------------------------
def test_fit_test_predict_iharmony4_config(iharmony4_root: Path, tmp_path: Path) -> None:
    config = str(CONFIGS / "semi_supervised_parametric_iharmony4.yaml")
    common = ["--config", config, f"--data.init_args.root={iharmony4_root}"]
    assert main(["fit", *common, "--trainer.fast_dev_run=1"]) == 0
    assert main(["test", *common, "--trainer.fast_dev_run=1"]) == 0
    predictions = tmp_path / "predictions"
    assert (
        main(
            [
                "predict",
                *common,
                "--trainer.fast_dev_run=1",
                f"--model.init_args.predictions_dir={predictions}",
            ]
        )
        == 0
    )
    assert list(predictions.glob("*.png"))


def test_fit_dual_stream_config(tmp_path: Path) -> None:
    write_photos(tmp_path / "pairs", 4, folders=("before", "after"))
    write_photos(tmp_path / "real", 3, seed=1)
    config = str(CONFIGS / "semi_supervised_parametric_dual_stream.yaml")
    common = [
        "--config",
        config,
        f"--data.init_args.supervised.init_args.root={tmp_path / 'pairs'}",
        f"--data.init_args.real_composites={tmp_path / 'real'}",
    ]
    assert main(["fit", *common, "--trainer.fast_dev_run=2"]) == 0
    assert main(["test", *common, "--trainer.fast_dev_run=1"]) == 0
    assert len(list((tmp_path / "real" / ".inpainted").glob("*.png"))) == 3


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of the tiny iHarmony4 config, saved by Lightning's end-of-epoch checkpoint."""
    from tests.fixtures.trees import make_iharmony4_tree

    folder = tmp_path_factory.mktemp("trained")
    root = make_iharmony4_tree(folder / "data")
    cli = make_cli(
        [
            "--config",
            str(CONFIGS / "semi_supervised_parametric_iharmony4.yaml"),
            f"--data.init_args.root={root}",
            "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={folder}",
            "--trainer.limit_val_batches=0",
        ],
        run=False,
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return Path(cli.trainer.checkpoint_callback.best_model_path)


def test_resuming_continues_the_same_run(trained_checkpoint: Path, iharmony4_root: Path) -> None:
    saved = torch.load(trained_checkpoint, weights_only=True)
    steps_per_epoch = saved["global_step"]
    assert saved["epoch"] == 0 and steps_per_epoch > 0
    cli = make_cli(
        [
            "--config",
            str(CONFIGS / "semi_supervised_parametric_iharmony4.yaml"),
            f"--data.init_args.root={iharmony4_root}",
            "--trainer.max_epochs=2",
            "--trainer.limit_val_batches=0",
        ],
        run=False,
    )
    restored_steps = []
    original_step = cli.model.training_step

    def spy(batch: dict, batch_idx: int) -> None:
        optimizer = cli.model.optimizers().optimizer
        restored_steps.append(min(int(s["step"]) for s in optimizer.state.values()) if optimizer.state else 0)
        original_step(batch, batch_idx)

    cli.model.training_step = spy  # type: ignore[method-assign]
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=trained_checkpoint)
    assert cli.trainer.current_epoch == 2
    assert cli.trainer.global_step == 2 * steps_per_epoch
    assert restored_steps[0] == steps_per_epoch  # Adam's state came back with the checkpoint
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 2 and scheduler.get_last_lr()[0] == pytest.approx(1e-3 * 0.2**2)


# --- harmony harmonize ----------------------------------------------------------------------------------
def harmonize(arguments: str) -> int:
    return main(["harmonize", *arguments.split()])


def test_harmonize_any_resolution_with_exports(trained_checkpoint: Path, tmp_path: Path) -> None:
    composite, mask = image_and_mask(123, 217)
    Image.fromarray(composite).save(tmp_path / "c.png")
    Image.fromarray((mask * 255).round().astype(np.uint8)).save(tmp_path / "m.png")
    mask = np.asarray(Image.open(tmp_path / "m.png"), dtype=np.float32) / 255
    inputs = f"--composite={tmp_path / 'c.png'} --mask={tmp_path / 'm.png'} --output={tmp_path / 'o.png'}"
    exports = f"--export-lut={tmp_path / 'o.cube'} --export-curves={tmp_path / 'o.json'}"
    exports += f" --export-shading={tmp_path / 's.png'}"
    assert harmonize(f"--checkpoint={trained_checkpoint} {inputs} {exports} --device=cpu") == 0
    output = np.asarray(Image.open(tmp_path / "o.png"))
    assert output.shape == composite.shape
    np.testing.assert_array_equal(output[mask == 0], composite[mask == 0])
    table = read_cube((tmp_path / "o.cube").read_text())
    curves = json.loads((tmp_path / "o.json").read_text())
    assert len(curves["x"]) == len(curves["red"]) == 32 and table.shape == (32, 32, 32, 3)
    shading = np.asarray(Image.open(tmp_path / "s.png"))
    assert shading.shape == mask.shape and (shading[mask == 0] == 255).all() and shading.min() >= 127
    # The exports reproduce the output (where the mask is hard; soft edges blend like editor layers).
    inside = mask == 1
    rebuilt = apply_cube(table, composite[inside] / 255.0) * shading[inside][:, None]
    assert np.abs(rebuilt - output[inside]).max() <= 1.5


def test_harmonize_rgba_folders_baselines_and_errors(
    trained_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    composite, mask = image_and_mask(40, 56)
    alpha = (mask * 255).round().astype(np.uint8)
    Image.fromarray(np.dstack([composite, alpha])).save(tmp_path / "rgba.png")
    rgba = f"--composite={tmp_path / 'rgba.png'} --output={tmp_path / 'o.png'}"
    assert harmonize(f"--checkpoint={trained_checkpoint} {rgba}") == 0
    output = np.asarray(Image.open(tmp_path / "o.png"))
    np.testing.assert_array_equal(output[alpha == 0], composite[alpha == 0])  # alpha was the mask

    for folder in ("in", "masks"):
        (tmp_path / folder).mkdir()
    for stem in ("a", "b"):
        Image.fromarray(composite).save(tmp_path / "in" / f"{stem}.jpg")
        Image.fromarray(alpha).save(tmp_path / "masks" / f"{stem}.png")
    folders = f"--composite={tmp_path / 'in'} --mask={tmp_path / 'masks'} --output={tmp_path / 'out'}"
    assert harmonize(f"--method=ReinhardLabTransfer {folders}") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]

    Image.fromarray(alpha[:20]).save(tmp_path / "small.png")
    capsys.readouterr()
    one = f"--composite={tmp_path / 'in' / 'a.jpg'} --output={tmp_path / 'x.png'}"
    assert harmonize(f"--method=Composite {one} --mask={tmp_path / 'small.png'}") == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "small.png" in error and "a.jpg" in error
    assert not (tmp_path / "x.png").exists()
    export = f"--export-lut={tmp_path / 'x.cube'}"
    assert harmonize(f"--method=Composite {one} --mask={tmp_path / 'masks' / 'a.png'} {export}") == 2
    assert "no curves" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(("height", "width"), [(1500, 1100), (300, 700), (1030, 513)])
def test_full_resolution_work_in_bands_equals_torch_on_the_whole_image(height: int, width: int) -> None:
    """The banded NumPy downsampling and gain upsampling equal torch's on the whole image within 1e-6."""
    import torch.nn.functional as F

    from harmony.methods.semi_supervised_parametric.any_resolution import ParametricAdjustments, downsample
    from harmony.methods.semi_supervised_parametric.semi_supervised_parametric import _resize

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    whole = _resize(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, 512)[0].numpy()
    np.testing.assert_allclose(downsample(image, 512, 255.0), whole, atol=1e-6, rtol=0)
    gain = torch.rand(1, 1, 64, 64) * 0.5 + 0.5
    adjustments = ParametricAdjustments(
        np.random.default_rng(1).random((3, 32), dtype=np.float32), gain[0, 0].numpy()
    )
    bands = [
        adjustments.gain_rows(height, width, slice(top, min(top + 256, height)))
        for top in range(0, height, 256)
    ]
    expected = F.interpolate(gain, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(np.concatenate(bands), expected, atol=1e-6, rtol=0)
