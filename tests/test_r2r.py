"""R2R: MACA, the Harmony Controller's hint and residuals, the R2R module through the CLI (tiny, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harmony.cli import main, make_cli
from harmony.data import types as keys
from harmony.methods.diffharmony import DiffHarmony
from harmony.methods.r2r import R2R, MACABank, MaskAwareChannelAttention
from harmony.methods.r2r.harmony_controller import canny_edges, controller_hint
from harmony.methods.r2r.r2r import HINT_KEY
from harmony.nn.latent import build_controlnet, build_noise_scheduler, build_unet, build_vae, latent_mask
from tests.conftest import REPO_ROOT, write_composite_and_mask

CONFIG = str(REPO_ROOT / "tests" / "configs" / "r2r_iharmony4.yaml")


def _tiny_r2r(**options: object) -> R2R:
    torch.manual_seed(0)
    model = R2R(
        build_unet("tiny_inpainting"),
        build_vae("tiny_inpainting"),
        build_noise_scheduler("tiny_inpainting"),
        build_controlnet("tiny_inpainting", conditioning_channels=7),
        inference_size=32,
        num_inference_steps=2,
        ema_decay=None,
        **options,
    )
    model.load_pretrained()
    return model


def _batch(size: int = 32, count: int = 2) -> dict:
    generator = torch.Generator().manual_seed(1)
    mask = torch.zeros(count, 1, size, size)
    mask[:, :, size // 4 : 3 * size // 4, size // 3 : 5 * size // 6] = 1
    return {
        keys.COMPOSITE: torch.rand(count, 3, size, size, generator=generator),
        keys.TARGET: torch.rand(count, 3, size, size, generator=generator),
        keys.MASK: mask,
    }


def _noise_inputs(model: R2R, batch: dict) -> tuple:
    latents = model.encode(batch[keys.TARGET])
    composite_latents = model.encode(batch[keys.COMPOSITE])
    mask = latent_mask(batch[keys.MASK], latents.shape[-2:])
    noisy = torch.randn_like(latents)
    timesteps = torch.tensor([10, 700])
    return (
        noisy,
        timesteps,
        mask,
        composite_latents,
        {HINT_KEY: model.hint(batch[keys.COMPOSITE], batch[keys.MASK])},
    )


# --- MACA ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["global", "masked"])
def test_maca_is_the_identity_at_init_and_then_changes_only_the_foreground(pooling: str) -> None:
    torch.manual_seed(0)
    maca = MaskAwareChannelAttention(8, pooling)
    features = torch.randn(2, 8, 6, 6)
    mask = torch.zeros(2, 1, 12, 12)
    mask[..., 2:8, 4:10] = 1
    assert torch.equal(maca(features, mask), features)
    optimizer = torch.optim.SGD(maca.parameters(), lr=1.0)
    maca(features, mask).pow(2).sum().backward()
    optimizer.step()
    output = maca(features, mask)
    grid = torch.nn.functional.interpolate(mask, size=(6, 6), mode="nearest").bool().expand_as(features)
    assert torch.equal(output[~grid], features[~grid])
    assert not torch.allclose(output[grid], features[grid])


def test_maca_sizes_match_the_official_code() -> None:
    assert sum(p.numel() for p in MaskAwareChannelAttention(320).parameters()) == 14 * 320**2 + 5 * 320
    with torch.device("meta"):
        controlnet = build_controlnet("sd15_inpainting", conditioning_channels=7)
        maca = MACABank.from_controlnet(controlnet)
    assert round(sum(p.numel() for p in controlnet.parameters()) / 1e6, 2) == 361.29
    assert round(sum(p.numel() for p in maca.parameters()) / 1e6, 2) == 53.06


# --- the hint -----------------------------------------------------------------------------------------
def test_hint_channels_are_edges_composite_mask_with_edges_only_inside_the_mask() -> None:
    batch = _batch(48, 1)
    hint = controller_hint(batch[keys.COMPOSITE], batch[keys.MASK])
    composite, mask = batch[keys.COMPOSITE] * 2 - 1, batch[keys.MASK]
    assert hint.shape == (1, 7, 48, 48)
    assert torch.allclose(hint[:, 3:6], composite)
    assert torch.equal(hint[:, 6:], mask)
    outside = (mask == 0).expand(-1, 3, -1, -1)
    quantized = torch.round((batch[keys.COMPOSITE] * 255 + 0.5).floor()) / 255 * 2 - 1
    assert torch.allclose(hint[:, :3][outside], quantized[outside], atol=1e-6)
    inside = hint[:, :3][(mask == 1).expand(-1, 3, -1, -1)]
    assert set(inside.unique().tolist()) <= {-1.0, 1.0}
    assert (inside == 1).any()  # the foreground's outline against white is an edge


def test_canny_edges_match_opencv_on_the_foreground_over_white() -> None:
    import cv2

    rng = np.random.default_rng(0)
    composite = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 5:25] = True
    over_white = np.where(mask[..., None], composite, 255).astype(np.uint8)
    expected = cv2.Canny(cv2.cvtColor(over_white, cv2.COLOR_BGR2GRAY), 100, 200)
    edges = canny_edges(composite, mask)
    assert np.array_equal(edges[mask], np.repeat(expected[mask][:, None], 3, axis=1))
    assert np.array_equal(edges[~mask], composite[~mask])


# --- the module ---------------------------------------------------------------------------------------
def test_untrained_r2r_predicts_exactly_what_its_unet_does() -> None:
    model = _tiny_r2r()
    inputs = _noise_inputs(model, _batch())
    with torch.no_grad():
        controlled = model.predict_noise(*inputs)
        plain = DiffHarmony.predict_noise(model, *inputs[:4])
        assert torch.equal(controlled, plain)
        for block in model.controlnet.controlnet_down_blocks:
            torch.nn.init.normal_(block.weight, std=0.1)
        assert not torch.allclose(model.predict_noise(*inputs), plain)


@pytest.mark.parametrize("reads_noisy_latents", [False, True])
def test_training_moves_only_the_controller(reads_noisy_latents: bool) -> None:
    model = _tiny_r2r(reads_noisy_latents=reads_noisy_latents)
    unet_before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    controller_before = [p.detach().clone() for _, p in model.ema_named_parameters()]
    optimizer = model.configure_optimizers()
    for _ in range(2):
        optimizer.zero_grad()
        model.training_loss(_batch()).backward()
        optimizer.step()
    assert all(torch.equal(v, model.unet.state_dict()[k]) for k, v in unet_before.items())
    changed = [
        not torch.equal(a, p)
        for a, (_, p) in zip(controller_before, model.ema_named_parameters(), strict=True)
    ]
    assert sum(changed) > len(changed) // 2
    assert all(not p.requires_grad for p in model.unet.parameters())


def test_the_controller_reads_the_noisy_latents_only_when_asked() -> None:
    model = _tiny_r2r()
    torch.nn.init.normal_(model.controlnet.conv_in.weight, std=1.0)
    for block in model.controlnet.controlnet_down_blocks:
        torch.nn.init.normal_(block.weight, std=0.1)
    noisy, timesteps, mask, composite_latents, extras = _noise_inputs(model, _batch())
    with torch.no_grad():
        first = model.predict_noise(noisy, timesteps, mask, composite_latents, extras)
        model.reads_noisy_latents = True
        second = model.predict_noise(noisy, timesteps, mask, composite_latents, extras)
    assert not torch.allclose(first, second)


def test_low_timesteps_are_drawn_with_the_configured_probability() -> None:
    model = _tiny_r2r()
    torch.manual_seed(0)
    timesteps = model.sample_timesteps(20000)
    total = model.noise_scheduler.config.num_train_timesteps
    expected = 0.3 + 0.7 * 500 / total
    assert abs((timesteps < 500).float().mean().item() - expected) < 0.02
    model.low_timestep_probability = 0.0
    assert abs((model.sample_timesteps(20000) < 500).float().mean().item() - 500 / total) < 0.02


def test_export_and_reload_of_the_controller(tmp_path: Path) -> None:
    model = _tiny_r2r()
    with torch.no_grad():
        for _, p in model.ema_named_parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.export_pretrained(tmp_path)
    reloaded = _tiny_r2r(controller_pretrained=str(tmp_path / "controller"))
    for (name, a), (_, b) in zip(model.ema_named_parameters(), reloaded.ema_named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_stage_one_unet_loads_from_a_diffharmony_checkpoint(iharmony4_root: Path, tmp_path: Path) -> None:
    diffharmony = str(REPO_ROOT / "tests" / "configs" / "diffharmony_iharmony4.yaml")
    run = tmp_path / "stage1"
    extra = ["--trainer.max_steps=1", "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={run}"]
    assert main(["fit", "--config", diffharmony, f"--data.init_args.root={iharmony4_root}", *extra]) == 0
    (checkpoint,) = (run / "checkpoints").glob("*.ckpt")
    stage1 = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = _tiny_r2r(diffharmony_checkpoint=str(checkpoint))
    names = [n for n, _ in model.unet.named_parameters()]
    ema = stage1.get("ema")
    expected = dict(zip(names, ema["shadow_params"], strict=True)) if ema else {}
    for name, tensor in model.unet.state_dict().items():
        reference = expected.get(name, stage1["state_dict"][f"unet.{name}"])
        assert torch.equal(tensor, reference), name
    with pytest.raises(Exception, match="not a readable harmony checkpoint|holds no DiffHarmony UNet"):
        _tiny_r2r(diffharmony_checkpoint=str(tmp_path / "missing.ckpt"))


def test_fit_test_predict_through_the_cli(iharmony4_root: Path, tmp_path: Path) -> None:
    predictions = tmp_path / "predictions"
    args = [
        "--config",
        CONFIG,
        f"--data.init_args.root={iharmony4_root}",
        f"--model.init_args.predictions_dir={predictions}",
        "--model.init_args.num_samples=2",
        "--trainer.fast_dev_run=true",
    ]
    cli = make_cli(args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    cli.trainer.predict(cli.model, datamodule=cli.datamodule)
    assert cli.model.test_results
    assert len(list(predictions.glob("*_1.png"))) == len(list(predictions.glob("*_0.png"))) > 0


@pytest.fixture(scope="module")
def trained_r2r(iharmony4_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint of a tiny R2R run of 2 optimizer steps."""
    run = tmp_path_factory.mktemp("r2r_run")
    extra = ["--trainer.max_steps=2", "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={run}"]
    assert main(["fit", "--config", CONFIG, f"--data.init_args.root={iharmony4_root}", *extra]) == 0
    (checkpoint,) = (run / "checkpoints").glob("*.ckpt")
    return checkpoint


def test_harmonize_and_reproduce_table1_with_an_r2r_checkpoint(trained_r2r: Path, tmp_path: Path) -> None:
    from harmony.commands.reproduce_table1 import load_method

    composite_path, mask_path, composite, mask = write_composite_and_mask(tmp_path)
    args = ["--checkpoint", str(trained_r2r), "--composite", str(composite_path), "--mask", str(mask_path)]
    assert main(["harmonize", *args, "--output", str(tmp_path / "o.png")]) == 0
    output = np.asarray(Image.open(tmp_path / "o.png"))
    assert output.shape == composite.shape
    np.testing.assert_array_equal(output[mask == 0], composite[mask == 0])
    assert not np.array_equal(output[mask > 0], composite[mask > 0])
    model = load_method(Path(CONFIG), trained_r2r)
    reference = R2R.load_from_checkpoint(trained_r2r, map_location="cpu")
    for (name, value), expected in zip(
        model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        assert torch.equal(value, expected), name


@pytest.mark.slow
def test_paper_sized_summary(capsys: pytest.CaptureFixture[str]) -> None:
    from harmony.commands import summary

    assert summary.main(["--config", str(REPO_ROOT / "experiments" / "r2r.yaml"), "--json"]) == 0
    out = capsys.readouterr().out
    counts = json.loads(out[out.index("{") :])
    millions = {name: round(count / 1e6, 2) for name, count in counts["children"].items()}
    assert millions == {"unet": 859.54, "vae": 83.65, "controlnet": 361.29, "maca": 53.06, "clear_vae": 1.9}
