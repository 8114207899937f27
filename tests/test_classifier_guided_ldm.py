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
from tests.conftest import REPO_ROOT

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
    rng = np.random.default_rng(2)
    composite = rng.integers(0, 256, size=(50, 77, 3), dtype=np.uint8)
    mask = np.zeros((50, 77), np.uint8)
    mask[10:40, 20:60] = 255
    Image.fromarray(composite).save(tmp_path / "c.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    args = ["--checkpoint", str(checkpoint), "--composite", str(tmp_path / "c.png"), "--mask"]
    assert main(["harmonize", *args, str(tmp_path / "m.png"), "--output", str(tmp_path / "o.png")]) == 0
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
