"""Unit tests of the latent-diffusion core, the Harmony-VAE and the refinement UNet (tiny, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from harmony.errors import HarmonyInputError
from harmony.nn.harmony_vae import HarmonyVAEModel
from harmony.nn.latent import (
    NullTextEmbedding,
    build_noise_scheduler,
    build_sampler,
    build_unet,
    build_vae,
    decode_latents,
    encode_images,
    foreground_weighted_mse,
    latent_mask,
    load_pretrained_weights,
    resize_for_inference,
    sample_latents,
    seeded_generators,
    unet_input,
)
from harmony.nn.refinement import RefinementUNet


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
def test_unet_input_order_is_noisy_mask_composite() -> None:
    noisy, mask, composite = (
        torch.full((2, 4, 8, 8), 1.0),
        torch.full((2, 1, 8, 8), 2.0),
        torch.full((2, 4, 8, 8), 3.0),
    )
    stacked = unet_input(noisy, mask, composite)
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


def _tiny_sampling(unet: UNet2DConditionModel, seed: int, batch: int) -> torch.Tensor:
    condition = torch.linspace(-1, 1, 5 * 8 * 8).reshape(1, 5, 8, 8).expand(batch, -1, -1, -1)
    text = torch.zeros(batch, 77, 32)

    def predict(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(torch.cat([latents, condition], dim=1), t, encoder_hidden_states=text).sample

    sampler = build_sampler(build_noise_scheduler())
    return sample_latents(predict, sampler, (batch, 4, 8, 8), 2, seeded_generators(seed, batch))


def test_seeded_sampler_is_reproducible_and_batch_independent(tiny_unet: UNet2DConditionModel) -> None:
    first, again = _tiny_sampling(tiny_unet, 0, 2), _tiny_sampling(tiny_unet, 0, 2)
    assert torch.equal(first, again)
    assert not torch.allclose(first, _tiny_sampling(tiny_unet, 1, 2))
    assert torch.allclose(first[0], first[1])  # same seed per image, same condition
    assert torch.allclose(_tiny_sampling(tiny_unet, 0, 1)[0], first[0], rtol=1e-4, atol=1e-4)


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
