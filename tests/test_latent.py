"""Unit tests of the latent-diffusion core, the Harmony-VAE and the refinement UNet (tiny, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from harmony.errors import HarmonyInputError
from harmony.methods.diffharmony import HarmonyVAEModel, RefinementUNet
from harmony.nn.latent import (
    DenoisingStep,
    NullTextEmbedding,
    build_controlnet,
    build_noise_scheduler,
    build_sampler,
    build_unet,
    build_vae,
    decode_latents,
    encode_images,
    foreground_weighted_mse,
    initialize_controlnet_from_unet,
    inpainting_input,
    latent_mask,
    load_pretrained_weights,
    predicted_original,
    resize_for_inference,
    sample_latents,
    seeded_generators,
    unet_prediction,
)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make_tiny_pipeline(folder: Path) -> Path:
    """A tiny SD-inpainting pipeline folder (unet, vae, CLIP text encoder and tokenizer), made offline."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(1234)  # not the seed models are built with, so loading visibly changes them
    build_unet("tiny_inpainting").save_pretrained(folder / "unet")
    build_vae("tiny_inpainting").save_pretrained(folder / "vae")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(
        folder / "tokenizer"
    )
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    CLIPTextModel(config).save_pretrained(folder / "text_encoder")
    return folder


# --- the 9-channel input, masks and loss -------------------------------------------------------------
def test_inpainting_input_order_is_noisy_mask_composite() -> None:
    noisy, mask, composite = (
        torch.full((2, 4, 8, 8), 1.0),
        torch.full((2, 1, 8, 8), 2.0),
        torch.full((2, 4, 8, 8), 3.0),
    )
    stacked = inpainting_input(noisy, mask, composite)
    assert stacked.shape == (2, 9, 8, 8)
    assert stacked[:, :4].eq(1).all() and stacked[:, 4].eq(2).all() and stacked[:, 5:].eq(3).all()


def test_latent_mask_is_nearest_and_stays_binary() -> None:
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 5:11, 5:11] = 1
    small = latent_mask(mask, (8, 8))
    assert set(small.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(small, mask[..., ::2, ::2])  # nearest picks the top-left pixel of each cell


def test_resize_for_inference_rethresholds_the_mask() -> None:
    composite, mask = torch.rand(1, 3, 20, 30), torch.zeros(1, 1, 20, 30)
    mask[..., 4:12, 6:20] = 1
    big, big_mask = resize_for_inference(composite, mask, 64)
    assert big.shape == (1, 3, 64, 64) and big_mask.shape == (1, 1, 64, 64)
    assert set(big_mask.unique().tolist()) == {0.0, 1.0}
    assert 0 <= big.min() and big.max() <= 1


def test_foreground_weighted_mse_on_hand_made_masks() -> None:
    prediction, target = torch.zeros(4, 4, 10, 10), torch.ones(4, 4, 10, 10)
    masks = torch.zeros(4, 1, 10, 10)
    masks[0] = 1  # A = 1: plain MSE
    masks[1, :, :5] = 1  # A = 0.5: masked MSE / 0.5
    masks[2, :, :1] = 1  # A = 0.1 < A_min: masked MSE / 0.2
    # masks[3] empty: nothing to learn
    per_sample = [
        foreground_weighted_mse(prediction[i : i + 1], target[i : i + 1], masks[i : i + 1]) for i in range(4)
    ]
    assert [float(v) for v in per_sample] == pytest.approx([1.0, 1.0, 0.1 / 0.2, 0.0])
    assert float(foreground_weighted_mse(prediction, target, masks)) == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    # A_min = 1 turns it into the plain masked MSE.
    assert float(
        foreground_weighted_mse(prediction[2:3], target[2:3], masks[2:3], min_foreground=1.0)
    ) == pytest.approx(0.1)


# --- schedules and sampling ------------------------------------------------------------------------
def test_noise_schedule_and_sampler_match_stable_diffusion() -> None:
    scheduler = build_noise_scheduler()
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert (scheduler.config.beta_start, scheduler.config.beta_end) == (0.00085, 0.012)
    assert scheduler.config.num_train_timesteps == 1000 and scheduler.config.prediction_type == "epsilon"
    sampler = build_sampler(scheduler)
    sampler.set_timesteps(5)
    assert sampler.timesteps[0] == pytest.approx(999) and sampler.timesteps[-1] == pytest.approx(0)
    assert torch.allclose(sampler.alphas_cumprod, scheduler.alphas_cumprod)


@pytest.fixture(scope="module")
def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return build_unet("tiny_inpainting").eval()


def _tiny_sampling(
    unet: UNet2DConditionModel,
    seed: int,
    batch: int,
    sampler: str = "euler_ancestral",
    steps: int = 2,
    **options: object,
) -> torch.Tensor:
    condition = torch.linspace(-1, 1, 5 * 8 * 8).reshape(1, 5, 8, 8).expand(batch, -1, -1, -1)
    text = torch.zeros(batch, 77, 32)

    def predict(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(torch.cat([latents, condition], dim=1), t, encoder_hidden_states=text).sample

    scheduler = build_sampler(build_noise_scheduler(), sampler)
    return sample_latents(
        predict, scheduler, (batch, 4, 8, 8), steps, seeded_generators(seed, batch), **options
    )


def test_seeded_sampler_is_reproducible_and_batch_independent(tiny_unet: UNet2DConditionModel) -> None:
    first, again = _tiny_sampling(tiny_unet, 0, 2), _tiny_sampling(tiny_unet, 0, 2)
    assert torch.equal(first, again)
    assert not torch.allclose(first, _tiny_sampling(tiny_unet, 1, 2))
    assert torch.allclose(first[0], first[1])  # same seed per image, same condition
    assert torch.allclose(_tiny_sampling(tiny_unet, 0, 1)[0], first[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["euler_ancestral", "euler", "ddim", "ddpm"])
def test_each_named_sampler_runs_from_the_training_schedule(
    name: str, tiny_unet: UNet2DConditionModel
) -> None:
    noise_scheduler = build_noise_scheduler("tiny_inpainting")
    sampler = build_sampler(noise_scheduler, name)
    assert torch.allclose(sampler.alphas_cumprod, noise_scheduler.alphas_cumprod)
    assert sampler.config.prediction_type == noise_scheduler.config.prediction_type
    latents = _tiny_sampling(tiny_unet, 0, 2, sampler=name, steps=3)
    assert latents.shape == (2, 4, 8, 8) and torch.isfinite(latents).all()
    with pytest.raises(ValueError, match="unknown sampler"):
        build_sampler(noise_scheduler, "heun")  # type: ignore[arg-type]


def test_ddim_with_eta_zero_is_deterministic(tiny_unet: UNet2DConditionModel) -> None:
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    # The same starting noise, different generators for the steps' own noise.
    runs = {
        (eta, seed): _tiny_sampling(tiny_unet, seed, 2, "ddim", 4, eta=eta, initial_noise=noise)
        for eta in (0.0, 1.0)
        for seed in (0, 1)
    }
    assert torch.equal(runs[0.0, 0], runs[0.0, 1])
    assert not torch.allclose(runs[1.0, 0], runs[1.0, 1])
    ancestral = [_tiny_sampling(tiny_unet, seed, 2, steps=4, initial_noise=noise) for seed in (0, 1)]
    assert not torch.allclose(*ancestral)


class _KeepPrediction:
    requires_grad = False

    def __init__(self) -> None:
        self.steps: list[DenoisingStep] = []

    def __call__(self, step: DenoisingStep) -> torch.Tensor:
        self.steps.append(step)
        return step.noise_prediction


@pytest.mark.parametrize("sampler", ["euler_ancestral", "ddim"])
def test_a_hook_returning_the_prediction_gives_bit_identical_samples(
    sampler: str, tiny_unet: UNet2DConditionModel
) -> None:
    hook = _KeepPrediction()
    plain = _tiny_sampling(tiny_unet, 0, 2, sampler, 3)
    assert torch.equal(_tiny_sampling(tiny_unet, 0, 2, sampler, 3, hook=hook), plain)
    assert [step.index for step in hook.steps] == [0, 1, 2]
    first = hook.steps[0]
    # The hook's latents are x_t in the DDPM parametrisation whatever the sampler, so x0 follows from ε.
    expected = (
        first.latents - (1 - first.alpha_bar).sqrt() * first.noise_prediction
    ) / first.alpha_bar.sqrt()
    assert torch.allclose(first.predicted_original, expected)
    assert float(hook.steps[0].alpha_bar) < float(hook.steps[-1].alpha_bar)  # noisiest first


class _BrightnessGuidance:
    """Classifier guidance pulling the decoded image's mean brightness toward ``target``."""

    requires_grad = True

    def __init__(self, vae: torch.nn.Module, target: float, scale: float) -> None:
        self.vae, self.target, self.scale = vae, target, scale

    def __call__(self, step: DenoisingStep) -> torch.Tensor:
        loss = (decode_latents(self.vae, step.predicted_original).mean() - self.target) ** 2
        (gradient,) = torch.autograd.grad(loss, step.latents)
        # eps_hat = eps - s sqrt(1 - a) grad log p, with log p = -loss.
        return step.shift_noise(self.scale * (1 - step.alpha_bar).sqrt() * gradient)


def test_a_guidance_hook_moves_the_decoded_brightness_to_its_target(
    tiny_unet: UNet2DConditionModel,
) -> None:
    torch.manual_seed(0)
    vae = build_vae("tiny_inpainting").eval()

    def brightness(hook: _BrightnessGuidance | None) -> float:
        latents = _tiny_sampling(tiny_unet, 0, 2, "ddim", 5, hook=hook)
        with torch.no_grad():
            return float(decode_latents(vae, latents).mean())

    unguided = brightness(None)
    for offset in (0.025, -0.025):
        target = unguided + offset
        guided = brightness(_BrightnessGuidance(vae, target, scale=1e5))
        assert (guided - unguided) * offset > 0  # moved the right way
        assert abs(guided - target) < 0.3 * abs(offset)  # and (nearly) there


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_shift_noise_moves_the_implied_noise_by_delta(prediction_type: str) -> None:
    torch.manual_seed(0)
    latents, output, delta = torch.randn(3, 1, 4, 4, 4).unbind()
    alpha_bar = torch.tensor(0.3)
    step = DenoisingStep(0, torch.tensor(500), latents, output, output, alpha_bar, prediction_type)

    def implied_noise(model_output: torch.Tensor) -> torch.Tensor:
        x0 = predicted_original(latents, model_output, alpha_bar, prediction_type)
        return (latents - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()

    assert torch.allclose(implied_noise(step.shift_noise(delta)), implied_noise(output) + delta, atol=1e-5)


# --- ControlNet conditioning -----------------------------------------------------------------------
def test_a_zero_initialised_controlnet_changes_nothing_until_it_trains(
    tiny_unet: UNet2DConditionModel,
) -> None:
    torch.manual_seed(0)
    controlnet = build_controlnet("tiny_inpainting", conditioning_channels=7)
    initialize_controlnet_from_unet(controlnet, tiny_unet)
    sample, hint = torch.randn(2, 9, 8, 8), torch.rand(2, 7, 16, 16)
    timestep, text = torch.tensor([10, 700]), torch.randn(2, 77, 32)
    with torch.no_grad():
        plain = unet_prediction(tiny_unet, sample, timestep, text)
        controlled = unet_prediction(tiny_unet, sample, timestep, text, controlnet, hint)
    assert torch.equal(controlled, plain)
    optimizer = torch.optim.SGD(controlnet.parameters(), lr=1e-2)
    loss = unet_prediction(tiny_unet, sample, timestep, text, controlnet, hint).pow(2).mean()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        trained = unet_prediction(tiny_unet, sample, timestep, text, controlnet, hint)
    assert not torch.allclose(trained, plain)
    with pytest.raises(ValueError, match="hint"):
        unet_prediction(tiny_unet, sample, timestep, text, controlnet)


def test_a_controlnet_starts_as_a_copy_of_the_unets_encoder(tiny_unet: UNet2DConditionModel) -> None:
    torch.manual_seed(1)
    controlnet = build_controlnet("tiny_inpainting", conditioning_channels=7)
    copied = ("conv_in", "time_embedding", "down_blocks", "mid_block")
    first_conv = controlnet.down_blocks[0].resnets[0].conv1.weight
    assert not torch.equal(first_conv, tiny_unet.down_blocks[0].resnets[0].conv1.weight)
    initialize_controlnet_from_unet(controlnet, tiny_unet)
    for name in copied:
        expected_values = getattr(tiny_unet, name).state_dict().values()
        for (key, value), expected in zip(
            getattr(controlnet, name).state_dict().items(), expected_values, strict=True
        ):
            assert torch.equal(value, expected), f"{name}.{key}"
    assert controlnet.controlnet_cond_embedding.conv_in.in_channels == 7
    assert all(block.weight.eq(0).all() for block in controlnet.controlnet_down_blocks)
    # A UNet with other input channels (text-to-image) shares everything but conv_in, which is kept.
    torch.manual_seed(2)
    other = build_controlnet("tiny_inpainting", conditioning_channels=7)
    conv_in = other.conv_in.weight.clone()
    initialize_controlnet_from_unet(other, build_unet("tiny_text_to_image"))
    assert torch.equal(other.conv_in.weight, conv_in)
    with pytest.raises(HarmonyInputError, match="does not match"):
        initialize_controlnet_from_unet(controlnet, _wide_unet())


def test_vae_round_trip_uses_the_scale_factor() -> None:
    torch.manual_seed(0)
    vae = build_vae("tiny_inpainting").eval()
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        latents = encode_images(vae, images, sample=False)
        raw = vae.encode(images * 2 - 1).latent_dist.mode()
        assert torch.allclose(latents, raw * vae.config.scaling_factor)
        decoded = decode_latents(vae, latents)
    assert decoded.shape == images.shape and 0 <= decoded.min() and decoded.max() <= 1


# --- text embedding and pretrained loading ---------------------------------------------------------
def test_null_text_embedding_zero_until_computed_then_from_clip(tmp_path: Path) -> None:
    pipeline = make_tiny_pipeline(tmp_path / "pipeline")
    null_text = NullTextEmbedding(32)
    assert null_text(3).shape == (3, 77, 32) and null_text(3).eq(0).all()
    null_text.compute(str(pipeline))
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(pipeline, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(pipeline, subfolder="text_encoder")
    with torch.no_grad():
        expected = encoder(
            tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
        )[0]
    assert torch.allclose(null_text.embedding, expected)
    assert "embedding" in null_text.state_dict()  # saved with the model: the encoder is not needed again
    with pytest.raises(HarmonyInputError, match="does not fit"):
        NullTextEmbedding(768).compute(str(pipeline))


def test_load_pretrained_weights_from_a_local_folder(tmp_path: Path) -> None:
    pipeline = make_tiny_pipeline(tmp_path / "pipeline")
    unet = build_unet("tiny_inpainting")
    load_pretrained_weights(unet, str(pipeline), "unet")
    saved = UNet2DConditionModel.from_pretrained(pipeline, subfolder="unet")
    for (name, value), (_, expected) in zip(
        unet.state_dict().items(), saved.state_dict().items(), strict=True
    ):
        assert torch.equal(value, expected), name
    # A VAE's latent scale comes with its weights.
    vae = build_vae("tiny_inpainting")
    vae.register_to_config(scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")
    fresh = build_vae("tiny_inpainting")
    load_pretrained_weights(fresh, str(tmp_path / "vae"))
    assert fresh.config.scaling_factor == 0.5
    with pytest.raises(HarmonyInputError, match="do not fit"):
        load_pretrained_weights(_wide_unet(), str(pipeline), "unet")
    with pytest.raises(HarmonyInputError, match="cannot load"):
        load_pretrained_weights(unet, str(tmp_path / "missing"), "unet")


def _wide_unet() -> UNet2DConditionModel:
    config = dict(
        UNet2DConditionModel.load_config(Path(__file__).parents[1] / "harmony/configs/tiny_inpainting/unet")
    )
    config["block_out_channels"] = [16, 32]
    return UNet2DConditionModel.from_config(config)


# --- paper-sized architectures, offline ------------------------------------------------------------
def test_paper_sized_architectures_build_offline_with_the_paper_counts() -> None:
    with torch.device("meta"):
        unet, vae = build_unet(), build_vae()
        harmony_vae = HarmonyVAEModel.from_vae(vae)
        refiner = RefinementUNet()
    assert unet.config.in_channels == 9 and unet.config.cross_attention_dim == 768
    assert count(unet) == 859_535_364  # 859.54M
    assert count(vae) == 83_653_863  # 83.65M
    assert count(harmony_vae.vae) == count(vae)
    assert count(harmony_vae.condition) == pytest.approx(36.1e6, rel=0.005)
    skips = sum(count(c) for c in harmony_vae.condition.skip_convs) + count(
        harmony_vae.condition.mid_skip_conv
    )
    assert skips == pytest.approx(1.92e6, rel=0.005)
    assert count(refiner) == pytest.approx(91.4e6, rel=0.005)


def test_paper_sized_controlnet_and_text_to_image_unet_build_offline() -> None:
    with torch.device("meta"):
        harmony_controller = build_controlnet("sd15_inpainting", conditioning_channels=7)
        text_to_image = build_unet("sd15_text_to_image")
        li_controlnet = build_controlnet("sd15_text_to_image")
    assert count(harmony_controller) == 361_294_096  # 361.29M: R2R's Harmony Controller before MACA
    assert harmony_controller.config.in_channels == 9
    assert text_to_image.config.in_channels == 4 and count(text_to_image) == 859_520_964  # 859.52M
    assert li_controlnet.config.conditioning_channels == 3
    # The hint encoder brings the pixel-resolution hint down to the latent grid (8x for SD, 2x tiny).
    assert len(li_controlnet.config.conditioning_embedding_out_channels) - 1 == 3
    tiny = build_controlnet("tiny_text_to_image")
    assert len(tiny.config.conditioning_embedding_out_channels) - 1 == 1


def test_summary_counts_a_component_offline(capsys: pytest.CaptureFixture[str]) -> None:
    from harmony.cli import main

    component = ["--component", "harmony.nn.latent.build_controlnet", "--component.conditioning_channels=7"]
    assert main(["summary", *component, "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["total"] == 361_294_096
    assert main(["summary", "--component", "harmony.nn.latent.build_unet", "--component.bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["summary"]) == 2


# --- Harmony-VAE -----------------------------------------------------------------------------------
def test_harmony_vae_decodes_exactly_like_the_vae_at_init() -> None:
    torch.manual_seed(0)
    vae = build_vae("tiny_inpainting").eval()
    harmony_vae = HarmonyVAEModel.from_vae(vae).eval()
    composite, mask = torch.rand(2, 3, 32, 32) * 2 - 1, (torch.rand(2, 1, 32, 32) > 0.5).float()
    z = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        assert torch.equal(harmony_vae.decode(z, composite, mask).sample, vae.decode(z).sample)
    # The mask input of the conditional encoder starts at zero, the RGB part is the VAE encoder's.
    conv_in = harmony_vae.condition.encoder.conv_in.weight
    assert conv_in[:, 3:].eq(0).all() and torch.equal(conv_in[:, :3], vae.encoder.conv_in.weight)


def test_harmony_vae_save_and_from_pretrained_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    harmony_vae = HarmonyVAEModel.from_vae(build_vae("tiny_inpainting"))
    for conv in harmony_vae.condition.skip_convs:
        torch.nn.init.normal_(conv.weight)  # not zero, so the round trip is meaningful
    harmony_vae.save_pretrained(tmp_path / "harmony_vae")
    assert (tmp_path / "harmony_vae" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = HarmonyVAEModel.from_pretrained(tmp_path / "harmony_vae")
    composite, mask, z = torch.rand(1, 3, 32, 32), torch.ones(1, 1, 32, 32), torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        assert torch.equal(
            loaded.decode(z, composite, mask).sample, harmony_vae.decode(z, composite, mask).sample
        )


def test_refinement_unet_is_residual_and_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    refiner = RefinementUNet(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)
    torch.nn.init.zeros_(refiner.conv_out.weight)
    torch.nn.init.zeros_(refiner.conv_out.bias)
    sample = torch.randn(2, 7, 32, 32)
    assert torch.equal(refiner(sample), sample[:, :3])  # a zero correction returns the harmonized input
    assert not hasattr(refiner, "time_embedding")
    refiner.save_pretrained(tmp_path / "refiner")
    loaded = RefinementUNet.from_pretrained(tmp_path / "refiner")
    assert torch.equal(loaded(sample), refiner(sample))
