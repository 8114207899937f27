"""Li et al.'s ClassifierGuidedLDM: discriminator, guided DDIM, fit/test/predict/harmonize (tiny, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harmony.cli import main, make_cli
from harmony.data import types as keys
from harmony.methods.classifier_guided_ldm import ClassifierGuidedLDM
from harmony.methods.classifier_guided_ldm.appearance_guidance import (
    AppearanceGuidance,
    appearance_discrepancy,
    grayscale,
    noisy_guidance_copies,
    region_weights,
)
from harmony.nn.latent import (
    build_controlnet,
    build_noise_scheduler,
    build_unet,
    build_vae,
    sample_latents,
    seeded_generators,
)
from tests.conftest import REPO_ROOT, write_composite_and_mask

CONFIG = str(REPO_ROOT / "tests" / "configs" / "classifier_guided_ldm_iharmony4.yaml")


def _tiny(**options: object) -> ClassifierGuidedLDM:
    torch.manual_seed(0)
    model = ClassifierGuidedLDM(
        build_unet("tiny_text_to_image"),
        build_vae("tiny_text_to_image"),
        build_noise_scheduler("tiny_text_to_image"),
        build_controlnet("tiny_text_to_image", conditioning_channels=4),
        **{"inference_size": 32, "num_inference_steps": 4, **options},
    )
    model.load_pretrained()
    return model.eval()


def _batch(size: int = 32, count: int = 2) -> dict:
    generator = torch.Generator().manual_seed(3)
    mask = torch.zeros(count, 1, size, size)
    mask[:, :, 8:24, 6:22] = 1
    return {keys.COMPOSITE: torch.rand(count, 3, size, size, generator=generator), keys.MASK: mask}


# --- the discriminator --------------------------------------------------------------------------------
def test_discriminator_on_hand_made_images() -> None:
    image = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert appearance_discrepancy(image, image.clone()) == 0
    # A brightness offset of 0.1 on every channel moves the gray image by 0.1: D = 0.01 per image.
    assert torch.isclose(appearance_discrepancy(image + 0.1, image), torch.tensor(2 * 0.01))
    # A colour change that keeps the channel mean is invisible to it.
    shifted = image + torch.tensor([0.1, -0.1, 0.0]).view(1, 3, 1, 1)
    assert torch.isclose(appearance_discrepancy(shifted, image), torch.tensor(0.0), atol=1e-12)
    assert torch.allclose(grayscale(image), image.mean(1, keepdim=True))
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4, :] = 1
    brighter_top = image + 0.2 * mask
    for region, expected in (("foreground", 0.04), ("background", 0.0), ("image", 0.02)):
        value = appearance_discrepancy(brighter_top, image, region_weights(mask, region))
        assert torch.isclose(value, torch.tensor(2 * expected)), region


def test_noisy_copies_have_the_step_distribution() -> None:
    guide = torch.full((1, 3, 16, 16), 0.5)
    alpha_bar = torch.tensor(0.36)
    copies = noisy_guidance_copies(guide, alpha_bar, 400, seeded_generators(0, 1))
    assert copies.shape == (400, 1, 3, 16, 16)
    assert abs(copies.mean().item() - 0.6 * 0.5) < 0.01
    assert abs(copies.var().item() - 0.64) < 0.01
    again = noisy_guidance_copies(guide, alpha_bar, 400, seeded_generators(0, 1))
    assert torch.equal(copies, again)


# --- guided sampling ----------------------------------------------------------------------------------
def test_zero_scale_guidance_is_plain_ddim_bit_for_bit() -> None:
    model = _tiny()
    batch = _batch()
    condition = model.condition(batch, seeded_generators(0, 2))
    hint = condition.extras["hint"]
    shape = (2, 4, 16, 16)

    def predict(latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return model.predict_noise(latents, timestep, hint)

    plain = sample_latents(predict, model.sampler, shape, 3, seeded_generators(0, 2))
    hook = AppearanceGuidance(model.vae, condition.composite, condition.mask, 0.0, 2, "image")
    guided = sample_latents(predict, model.sampler, shape, 3, seeded_generators(0, 2), hook=hook)
    assert torch.equal(plain, guided)
    model.guidance_scale = 0.0
    off = model.harmonize(batch)
    model.guidance = False
    assert torch.equal(off, model.harmonize(batch))


def test_guidance_moves_the_brightness_towards_the_composite() -> None:
    # The sign check: a positive scale lowers the grayscale error of the decoded output, a negative one
    # (Algorithm 1's printed sign) raises it. The untrained tiny decoder responds weakly, hence the scales.
    batch = _batch()
    errors = {}
    for scale in (-1000.0, 0.0, 1000.0):
        model = _tiny(guidance_scale=scale, color_transfer="none", num_inference_steps=6)
        condition = model.condition(batch, seeded_generators(0, 2))
        images = model.decode(model.sample(condition, seeded_generators(0, 2)), condition)
        errors[scale] = (grayscale(images) - grayscale(condition.composite)).pow(2).mean().item()
    assert errors[1000.0] < 0.95 * errors[0.0] < 0.95 * errors[-1000.0], errors


def test_the_hint_carries_the_mask_only_when_configured() -> None:
    batch = _batch()
    model = _tiny()
    hint = model.hint(batch[keys.COMPOSITE], batch[keys.MASK])
    assert torch.equal(hint, torch.cat([batch[keys.COMPOSITE], batch[keys.MASK]], dim=1))
    with pytest.raises(Exception, match="hint channels"):
        _tiny(hint_mask=False)


def test_untrained_controlnet_leaves_the_unet_unchanged_and_only_it_trains() -> None:
    model = _tiny()
    batch = {**_batch(), keys.TARGET: torch.rand(2, 3, 32, 32)}
    latents = torch.randn(2, 4, 16, 16)
    timesteps = torch.tensor([5, 600])
    hint = model.hint(batch[keys.COMPOSITE], batch[keys.MASK])
    with torch.no_grad():
        text = model.null_text(2)
        assert torch.equal(
            model.predict_noise(latents, timesteps, hint),
            model.unet(latents, timesteps, encoder_hidden_states=text).sample,
        )
    unet_before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    optimizer = model.configure_optimizers()
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        model.training_step(batch, 0).backward()
        optimizer.step()
    assert all(torch.equal(v, model.unet.state_dict()[k]) for k, v in unet_before.items())
    with torch.no_grad():
        assert not torch.allclose(
            model.predict_noise(latents, timesteps, hint),
            model.unet(latents, timesteps, encoder_hidden_states=text).sample,
        )


# --- through the CLI ----------------------------------------------------------------------------------
def test_fit_test_predict_with_five_samples(iharmony4_root: Path, tmp_path: Path) -> None:
    predictions = tmp_path / "predictions"
    args = [
        "--config",
        CONFIG,
        f"--data.init_args.root={iharmony4_root}",
        f"--model.init_args.predictions_dir={predictions}",
        "--model.init_args.num_samples=5",
        "--trainer.fast_dev_run=true",
    ]
    cli = make_cli(args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    cli.trainer.predict(cli.model, datamodule=cli.datamodule)
    assert cli.model.test_results
    first = sorted(predictions.glob("*_0.png"))
    assert first and all((predictions / p.name.replace("_0.png", "_4.png")).is_file() for p in first)
    outputs = [np.asarray(Image.open(predictions / first[0].name.replace("_0", f"_{k}"))) for k in range(5)]
    assert any(not np.array_equal(outputs[0], other) for other in outputs[1:])  # consecutive seeds differ


def test_harmonize_with_a_checkpoint_at_any_size(iharmony4_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    extra = ["--trainer.max_steps=1", "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={run}"]
    assert main(["fit", "--config", CONFIG, f"--data.init_args.root={iharmony4_root}", *extra]) == 0
    (checkpoint,) = (run / "checkpoints").glob("*.ckpt")
    composite_path, mask_path, composite, mask = write_composite_and_mask(tmp_path, 50, 77, seed=2)
    args = ["--checkpoint", str(checkpoint), "--composite", str(composite_path), "--mask", str(mask_path)]
    assert main(["harmonize", *args, "--output", str(tmp_path / "o.png")]) == 0
    output = np.asarray(Image.open(tmp_path / "o.png"))
    assert output.shape == composite.shape
    np.testing.assert_array_equal(output[mask == 0], composite[mask == 0])


@pytest.mark.slow
def test_paper_sized_summary(capsys: pytest.CaptureFixture[str]) -> None:
    from harmony.commands import summary

    config = str(REPO_ROOT / "experiments" / "classifier_guided_ldm.yaml")
    assert summary.main(["--config", config, "--json"]) == 0
    out = capsys.readouterr().out
    counts = json.loads(out[out.index("{") :])
    millions = {name: round(count / 1e6, 2) for name, count in counts["children"].items()}
    assert millions["unet"] == 859.52 and millions["vae"] == 83.65
    assert 360 < millions["controlnet"] < 362
    assert counts["trainable"] == counts["children"]["controlnet"]


# --- learning on SyntheticHarmony (slow) --------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="the colour-transfer claim does not hold on SyntheticHarmony: HSV transfer raises the samples' "
    "MSE 843 -> 1244 and fMSE 4166 -> 6289 (32 validation composites x 3 seeds, guidance off). It sets the "
    "foreground's lightness to the composite's matched to the background's mean/std, and a foreground's "
    "true lightness is not the background's: applied to the real image itself it gives fMSE 1424 (0 "
    "before), to the Composite 1791 (901 before). The guidance claim holds (s=300, n=4 vs s=0: foreground "
    "brightness error 1021 -> 675, whole image 722 -> 431).",
)
def test_tiny_classifier_guided_ldm_on_synthetic_harmony(tmp_path: Path) -> None:
    """A tiny stand-in SD + ControlNet trained on SyntheticHarmony (32 px, CPU) checks Li et al.'s claims.

    Recipe: a stand-in pretrained VAE (1500 steps on the training real images and composites, scaling
    factor 1 / std of its latents), a stand-in Stable Diffusion (the tiny text-to-image UNet trained
    unconditionally under the zero prompt on the real images' latents, 600 steps, v-prediction: the
    epsilon target is ill-conditioned for a UNet trained from scratch this briefly), then the ControlNet
    with that UNet frozen (the module's ``training_step``, 600 steps); scene colour jitter throughout.
    Claims, on the 32 validation composites at 20 DDIM steps, 3 seeds each: the appearance guidance at
    the default (s, n) lowers the brightness (grayscale) error of the samples against the real image,
    over the foreground and the whole image, versus s = 0; the HSV colour transfer lowers the samples'
    MSE and fMSE (guidance off).
    """
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from harmony.data import SyntheticHarmonyDataModule
    from harmony.data.composites import paste_background
    from harmony.nn.latent import decode_latents, encode_images
    from harmony.postprocess import make_color_transfer

    def data(batch_size: int, train: bool) -> SyntheticHarmonyDataModule:
        return SyntheticHarmonyDataModule(
            root=tmp_path / "synthetic", seed=0, num_train=480, num_val=32, num_test=8, source_size=32,
            image_size=32, batch_size=batch_size, augment=train, scene_color_jitter=1.0 if train else 0.0,
        )  # fmt: skip

    def batches(datamodule: SyntheticHarmonyDataModule):  # noqa: ANN202
        while True:
            yield from datamodule.train_dataloader()

    def fit(module: torch.nn.Module, parameters: list, steps: int, loss_of, lr: float, **kw) -> None:  # noqa: ANN001, ANN003
        optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=kw.get("weight_decay", 1e-2))
        schedule = kw.get("schedule", lambda o: None)(optimizer)
        for _ in range(steps):
            loss = loss_of(next(stream))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            if schedule is not None:
                schedule.step()

    torch.set_flush_denormal(True)  # denormal weights late in training slow the CPU kernels many times
    try:
        train, val = data(8, train=True), data(8, train=False)
        train.setup("fit")
        val.setup("fit")
        stream = batches(train)
        # 1. The stand-in pretrained VAE.
        torch.manual_seed(0)
        vae = build_vae("tiny_text_to_image")

        def vae_loss(batch: dict) -> torch.Tensor:
            images = torch.cat([batch[keys.TARGET], batch[keys.COMPOSITE]]) * 2 - 1
            reconstruction = vae.decode(vae.encode(images).latent_dist.sample()).sample
            return F.l1_loss(reconstruction, images) + F.mse_loss(reconstruction, images)

        one_cycle = lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 1e-3, total_steps=1500, pct_start=0.1)  # noqa: E731
        fit(vae, list(vae.parameters()), 1500, vae_loss, 1e-3, weight_decay=0.0, schedule=one_cycle)
        vae.eval().requires_grad_(False)
        with torch.no_grad():
            latents = torch.cat(
                [vae.encode(b[keys.TARGET] * 2 - 1).latent_dist.mode() for b in val.val_dataloader()]
            )
        vae.register_to_config(scaling_factor=float(1 / latents.std()))
        # 2. The stand-in Stable Diffusion: unconditional, zero prompt.
        noise_scheduler = DDPMScheduler.from_config(
            build_noise_scheduler("tiny_text_to_image").config, prediction_type="v_prediction"
        )
        torch.manual_seed(0)
        unet = build_unet("tiny_text_to_image")
        text = torch.zeros(8, 77, unet.config.cross_attention_dim)

        def unet_loss(batch: dict) -> torch.Tensor:
            with torch.no_grad():
                clean = encode_images(vae, batch[keys.TARGET]).float()
            noise, timesteps = torch.randn_like(clean), torch.randint(0, 1000, (clean.shape[0],))
            noisy = noise_scheduler.add_noise(clean, noise, timesteps)
            prediction = unet(noisy, timesteps, encoder_hidden_states=text[: clean.shape[0]]).sample
            return F.mse_loss(prediction, noise_scheduler.get_velocity(clean, noise, timesteps))

        fit(unet, list(unet.parameters()), 600, unet_loss, 2e-3)
        # 3. The ControlNet on the frozen UNet.
        torch.manual_seed(0)
        model = ClassifierGuidedLDM(
            unet, vae, noise_scheduler, build_controlnet("tiny_text_to_image", conditioning_channels=4),
            color_transfer="none", inference_size=32, num_inference_steps=20,
        )  # fmt: skip
        model.load_pretrained()
        model.train()
        fit(model, list(model.controlnet.parameters()), 600, lambda b: model.training_step(b, 0), 1e-3)
        model.eval()
    finally:
        torch.set_flush_denormal(False)

    def measure(guidance_scale: float) -> dict[str, float]:
        model.guidance_scale = guidance_scale  # the default guidance_copies
        values: dict[str, list[float]] = {}
        # Three sampling seeds per composite: one seed's verdict on the foreground can go either way.
        runs = [(seed, index, batch) for seed in range(3) for index, batch in enumerate(val.val_dataloader())]
        with torch.no_grad():
            for seed, index, batch in runs:
                composite, mask, real = batch[keys.COMPOSITE], batch[keys.MASK], batch[keys.TARGET]
                generators = seeded_generators(seed + 1000 * index, composite.shape[0])
                condition = model.condition(batch, generators)
                sample = decode_latents(vae, model.sample(condition, generators)).float().clamp(0, 1)
                pixels = mask.sum((1, 2, 3)).clamp_min(1)
                gray = (grayscale(sample) - grayscale(real)).mul(255).pow(2)
                per_image = {
                    "brightness_fg": (gray * mask).sum((1, 2, 3)) / pixels,
                    "brightness_image": gray.mean((1, 2, 3)),
                }
                for space in ("none", "hsv"):
                    transfer = make_color_transfer(space)
                    output = sample if transfer is None else transfer(sample, composite, mask)
                    error = (paste_background(output.clamp(0, 1), composite, mask) - real).mul(255).pow(2)
                    per_image[f"mse_{space}"] = error.mean((1, 2, 3))
                    per_image[f"fmse_{space}"] = (error * mask).sum((1, 2, 3)) / (3 * pixels)
                for name, value in per_image.items():
                    values.setdefault(name, []).extend(value.tolist())
        return {name: sum(v) / len(v) for name, v in values.items()}

    default_scale, default_copies = model.guidance_scale, model.guidance_copies
    plain, guided = measure(0.0), measure(default_scale)
    print(f"s=0: {plain}\ns={default_scale}, n={default_copies}: {guided}")
    assert guided["brightness_fg"] < plain["brightness_fg"], (plain, guided)
    assert guided["brightness_image"] < plain["brightness_image"], (plain, guided)
    assert plain["mse_hsv"] < plain["mse_none"] and plain["fmse_hsv"] < plain["fmse_none"], plain
