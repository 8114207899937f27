"""Li et al.'s ClassifierFreeDDPM: input order, loss, seeded DDIM, ADM U-Net size, CLI runs (tiny, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from harmony.cli import main, make_cli
from harmony.data import types as keys
from harmony.data.records import list_iharmony4
from harmony.methods.classifier_guided_ldm import ClassifierFreeDDPM, build_adm_unet
from harmony.nn.latent import seeded_generators
from tests.conftest import REPO_ROOT

CONFIG = str(REPO_ROOT / "tests" / "configs" / "classifier_guided_ddpm_iharmony4.yaml")
EXPERIMENT = str(REPO_ROOT / "experiments" / "classifier_guided_ddpm.yaml")
ADM256_PARAMETERS = 552_816_387


def _schedule() -> DDPMScheduler:
    return DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=True)


def _tiny(**options: object) -> ClassifierFreeDDPM:
    torch.manual_seed(0)
    # Not zero-initialised, so the U-Net's output depends on its input from the start.
    unet = build_adm_unet("tiny", zero_init=False)
    options = {"inference_size": 32, "num_inference_steps": 3, **options}
    return ClassifierFreeDDPM(unet, _schedule(), **options).eval()


def _batch(count: int = 2, size: int = 32) -> dict:
    generator = torch.Generator().manual_seed(3)
    mask = torch.zeros(count, 1, size, size)
    mask[:, :, 8:24, 6:22] = 1
    return {
        keys.COMPOSITE: torch.rand(count, 3, size, size, generator=generator),
        keys.TARGET: torch.rand(count, 3, size, size, generator=generator),
        keys.MASK: mask,
    }


class _Recorder:
    """Forward hook keeping every U-Net call's input, timesteps and output."""

    def __init__(self, unet: UNet2DModel) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.handle = unet.register_forward_hook(self)

    def __call__(self, module: UNet2DModel, args: tuple, output: object) -> None:
        sample, timestep = args
        self.calls.append((sample.detach(), torch.as_tensor(timestep).detach(), output.sample.detach()))


# --- the model ----------------------------------------------------------------------------------------
def test_training_input_is_noisy_composite_mask_and_the_loss_is_the_noise_mse() -> None:
    model = _tiny()
    batch = _batch()
    recorder = _Recorder(model.unet)
    loss = model.training_loss(batch)
    ((model_input, timesteps, output),) = recorder.calls
    assert model_input.shape == (2, 7, 32, 32) and timesteps.shape == (2,)
    assert torch.equal(model_input[:, 3:6], batch[keys.COMPOSITE] * 2 - 1)
    assert torch.equal(model_input[:, 6:], batch[keys.MASK])
    # The first three channels are the real image (in [-1, 1]) diffused to the sampled timesteps; the noise
    # they imply is what the loss compares the U-Net's output with.
    alpha_bar = model.noise_scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noise = (model_input[:, :3] - alpha_bar.sqrt() * (batch[keys.TARGET] * 2 - 1)) / (1 - alpha_bar).sqrt()
    assert noise.std().item() == pytest.approx(1.0, abs=0.1)  # standard normal noise
    assert torch.allclose(loss, F.mse_loss(output, noise), rtol=1e-4)


def test_sampling_input_is_noisy_composite_mask_at_each_ddim_step() -> None:
    model = _tiny()
    batch = _batch()
    recorder = _Recorder(model.unet)
    model.harmonize(batch)
    assert [int(t) for _, t, _ in recorder.calls] == [666, 333, 0]
    for model_input, _, _ in recorder.calls:
        assert torch.equal(model_input[:, 3:6], batch[keys.COMPOSITE] * 2 - 1)
        assert torch.equal(model_input[:, 6:], batch[keys.MASK])
    # The default 50 steps are ADM's "ddim50" respacing: every 20th training step, from 980 down to 0.
    model.sampler.set_timesteps(50)
    assert model.sampler.timesteps.tolist() == list(range(980, -1, -20))


def test_sampling_is_seeded_and_keeps_the_background() -> None:
    model = _tiny()
    batch = _batch()
    first = model.generate(batch, seed=0)
    assert torch.equal(first, model.generate(batch, seed=0))
    other = model.generate(batch, seed=1)
    background = (batch[keys.MASK] == 0).expand_as(first)
    for output in (first, other):
        assert torch.equal(output[background], batch[keys.COMPOSITE][background])
    assert not torch.allclose(first[~background], other[~background])
    assert not torch.allclose(first[~background], batch[keys.COMPOSITE][~background])
    # One generator per image: an image's result does not depend on the batch it is in.
    alone = model.generate({name: value[:1] for name, value in batch.items()}, seed=0)
    assert torch.allclose(alone, first[:1], atol=1e-4)


def test_classifier_free_guidance_options() -> None:
    batch = _batch()
    guided = _tiny(cfg_scale=3.0)
    recorder = _Recorder(guided.unet)
    condition = guided.condition(batch, None)
    output = guided.sample(condition, seeded_generators(0, 2))
    assert len(recorder.calls) == 3  # one pass per step holds both predictions
    model_input, _, both = recorder.calls[0]
    assert model_input.shape[0] == 4
    assert torch.equal(model_input[:2, :3], model_input[2:, :3])  # the same noisy images
    assert torch.equal(model_input[:2, 3:6], batch[keys.COMPOSITE] * 2 - 1)
    assert torch.equal(model_input[:2, 6:], batch[keys.MASK])
    assert model_input[2:, 3:].eq(0).all()  # the unconditional half sees no composite and no mask
    # The first step's guided prediction, ε_∅ + s·(ε_c − ε_∅), moves DDIM away from the unguided path.
    unguided = _tiny().sample(condition, seeded_generators(0, 2))
    assert not torch.allclose(both[:2], both[2:])
    assert not torch.allclose(output, unguided)

    dropping = _tiny(condition_dropout=0.5)
    recorder = _Recorder(dropping.unet)
    torch.manual_seed(1)
    dropping.training_loss(_batch(count=16))
    model_input = recorder.calls[0][0]
    dropped = model_input[:, 3:].flatten(1).eq(0).all(dim=1)
    assert 0 < int(dropped.sum()) < 16  # some samples train the unconditional model, the others not
    with pytest.raises(ValueError, match="condition_dropout"):
        _tiny(condition_dropout=1.0)


# --- the U-Net ----------------------------------------------------------------------------------------
def _adm_parameter_count(
    in_channels: int = 7, out_channels: int = 3, width: int = 256, num_classes: int = 0
) -> int:
    """Parameters of ADM's 256 px U-Net counted from its description, independently of diffusers.

    Multipliers (1, 1, 2, 2, 4, 4), 2 res blocks per level (3 on the way up), res-block down/up-sampling,
    scale-shift time injection (a 2×channels projection), attention at downsampling 8, 16 and 32.
    """
    embedding = 4 * width

    def res_block(c_in: int, c_out: int) -> int:
        norms = 2 * c_in + 2 * c_out
        convs = 9 * c_in * c_out + c_out + 9 * c_out * c_out + c_out
        skip = c_in * c_out + c_out if c_in != c_out else 0
        return norms + convs + 2 * embedding * c_out + 2 * c_out + skip

    def attention(c: int) -> int:
        return 2 * c + 4 * c * c + 4 * c  # norm, q/k/v and output projections

    multipliers, attention_at = (1, 1, 2, 2, 4, 4), (8, 16, 32)
    total = width * embedding + embedding + embedding * embedding + embedding  # timestep MLP
    total += num_classes * embedding + 9 * in_channels * width + width
    channels, skips, downsampling = width, [width], 1
    for level, multiplier in enumerate(multipliers):
        for _ in range(2):
            total += res_block(channels, multiplier * width)
            channels = multiplier * width
            total += attention(channels) if downsampling in attention_at else 0
            skips.append(channels)
        if level < len(multipliers) - 1:
            total += res_block(channels, channels)
            skips.append(channels)
            downsampling *= 2
    total += 2 * res_block(channels, channels) + attention(channels)
    for level in reversed(range(len(multipliers))):
        for index in range(3):
            total += res_block(channels + skips.pop(), multipliers[level] * width)
            channels = multipliers[level] * width
            total += attention(channels) if downsampling in attention_at else 0
            if level and index == 2:
                total += res_block(channels, channels)
                downsampling //= 2
    return total + 2 * channels + 9 * channels * out_channels + out_channels


def test_paper_sized_unet_is_adm256_on_the_meta_device() -> None:
    with torch.device("meta"):
        unet = build_adm_unet("adm256")
    count = sum(p.numel() for p in unet.parameters())
    adm_conditional = _adm_parameter_count(in_channels=3, out_channels=6, num_classes=1000)
    print(
        f"ADM-256 U-Net, 7 in / 3 out: {count:,} ({count / 1e6:.2f}M); ADM's conditional: {adm_conditional:,}"
    )
    assert count == ADM256_PARAMETERS == _adm_parameter_count()
    assert round(adm_conditional / 1e6) == 554  # the size ADM reports for its ImageNet-256 model
    assert (unet.config.in_channels, unet.config.out_channels) == (7, 3)
    with_attention = [hasattr(block, "attentions") for block in unet.down_blocks]
    assert with_attention == [False, False, False, True, True, True]  # 32, 16 and 8 px
    assert all(a.heads * 64 == a.inner_dim for b in unet.down_blocks[3:] for a in b.attentions)
    assert unet.mid_block.attentions[0].group_norm is not None


def test_zero_init_makes_the_untrained_unet_predict_zero_noise() -> None:
    unet = build_adm_unet("tiny")
    output = unet(torch.randn(2, 7, 32, 32), torch.tensor([10, 900])).sample
    assert output.shape == (2, 3, 32, 32) and output.eq(0).all()
    assert unet.down_blocks[0].resnets[0].conv2.weight.eq(0).all()
    assert build_adm_unet("tiny", zero_init=False).conv_out.weight.ne(0).any()


def test_wrong_unet_channels_are_one_clear_error() -> None:
    unet = UNet2DModel(
        in_channels=3, block_out_channels=(8, 8), down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2, norm_num_groups=4,
    )  # fmt: skip
    with pytest.raises(ValueError, match="7 channels"):
        ClassifierFreeDDPM(unet, _schedule())


# --- through the CLI ------------------------------------------------------------------------------------
def _args(root: Path, *extra: str) -> list[str]:
    return ["--config", CONFIG, f"--data.init_args.root={root}", *extra]


@pytest.fixture(scope="module")
def trained(iharmony4_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run of 2 optimizer steps: its checkpoint and exported U-Net."""
    run = tmp_path_factory.mktemp("classifier_free_ddpm_run")
    extra = ["--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0"]
    assert main(["fit", *_args(iharmony4_root, *extra, f"--trainer.default_root_dir={run}")]) == 0
    return run


def test_fit_test_predict_with_several_samples(iharmony4_root: Path, tmp_path: Path) -> None:
    predictions = tmp_path / "predictions"
    extra = [f"--model.init_args.predictions_dir={predictions}", "--model.init_args.num_samples=2"]
    cli = make_cli(_args(iharmony4_root, "--trainer.fast_dev_run=true", *extra), run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    cli.trainer.predict(cli.model, datamodule=cli.datamodule)
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


def test_export_then_unet_pretrained_round_trip(iharmony4_root: Path, trained: Path) -> None:
    (checkpoint,) = (trained / "checkpoints").glob("*.ckpt")
    evaluated = ClassifierFreeDDPM.load_from_checkpoint(checkpoint, map_location="cpu")  # EMA weights
    exported = UNet2DModel.from_pretrained(trained / "pretrained" / "unet")
    for (name, value), loaded in zip(
        evaluated.unet.state_dict().items(), exported.state_dict().values(), strict=True
    ):
        assert torch.equal(value, loaded), name

    pretrained = f"--model.init_args.unet_pretrained={trained / 'pretrained' / 'unet'}"
    cli = make_cli(_args(iharmony4_root, pretrained), run=False)
    assert not torch.equal(
        cli.model.unet.conv_out.weight, exported.conv_out.weight
    )  # nothing read when built
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    for (name, value), loaded in zip(
        cli.model.unet.state_dict().items(), exported.state_dict().values(), strict=True
    ):
        assert torch.equal(value, loaded), name


def test_harmonize_image_from_a_checkpoint(trained: Path) -> None:
    (checkpoint,) = (trained / "checkpoints").glob("*.ckpt")
    model = ClassifierFreeDDPM.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    rng = np.random.default_rng(0)
    composite = rng.integers(0, 256, size=(37, 50, 3), dtype=np.uint8)
    mask = np.zeros((37, 50), np.float32)
    mask[10:30, 5:25] = 1
    output = model.harmonize_image(composite, mask)
    assert output.shape == composite.shape and output.dtype == np.uint8
    np.testing.assert_array_equal(output[mask == 0], composite[mask == 0])
    np.testing.assert_array_equal(model.harmonize_image(composite, mask), output)  # seeded


@pytest.mark.slow
def test_paper_sized_summary_needs_no_network(capsys: pytest.CaptureFixture[str]) -> None:
    from harmony.commands import summary

    assert summary.main(["--config", EXPERIMENT, "--json"]) == 0
    out = capsys.readouterr().out
    counts = json.loads(out[out.index("{") :])
    assert counts["children"] == {"unet": ADM256_PARAMETERS}
    assert counts["trainable"] == ADM256_PARAMETERS
