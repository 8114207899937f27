"""Resuming ``harmony fit``: ``--ckpt_path last``, bit-identical epoch-boundary resume, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from harmony.callbacks import EXIT_TERMINATED, RandomState
from harmony.cli import main
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "tests" / "configs"
PARAMETRIC = "semi_supervised_parametric_iharmony4.yaml"
# Two optimizers (generator and discriminator, manual optimization), each with a schedule; half of each
# batch made harmonious draws from torch's generator, so the random states matter too.
GAN = [
    "--model.init_args.discriminator=harmony.methods.semi_supervised_parametric.UNetDiscriminatorSN",
    "--model.init_args.discriminator.init_args.base_channels=4",
    "--model.init_args.discriminator_optimizer=torch.optim.Adam",
    "--model.init_args.discriminator_optimizer.init_args.lr=1e-3",
    "--model.init_args.discriminator_scheduler=torch.optim.lr_scheduler.StepLR",
    "--model.init_args.discriminator_scheduler.init_args.step_size=1",
    "--model.init_args.harmonious_fraction=0.5",
    # Albumentations' own random state is not restored without loader workers (README).
    "--data.init_args.augment=false",
]
# DiffHarmony's tiny mirror with an EMA: noise and timesteps come from torch's generator.
EMA = ["--model.init_args.ema_decay=0.9"]


def fit_arguments(config: str, root: Path, run: Path, epochs: int, *extra: str) -> list[str]:
    """``harmony fit`` of a tiny config: two training batches of 2 and one validation batch per epoch."""
    return [
        "fit",
        "--config",
        str(CONFIGS / config),
        f"--data.init_args.root={root}",
        "--data.init_args.batch_size=2",
        f"--trainer.max_epochs={epochs}",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        f"--trainer.default_root_dir={run}",
        *extra,
    ]


def fit(config: str, root: Path, run: Path, epochs: int, *extra: str) -> int:
    """Run :func:`fit_arguments` in this process; returns the exit status."""
    return main(fit_arguments(config, root, run, epochs, *extra))


def last_of(run: Path) -> dict:
    (path,) = run.rglob("last.ckpt")
    return torch.load(path, weights_only=True)


def assert_identical(first: object, second: object, where: str = "") -> None:
    """Equal structure, and every tensor bit-identical (same dtype, shape and values)."""
    if isinstance(first, torch.Tensor):
        assert isinstance(second, torch.Tensor) and first.dtype == second.dtype, where
        assert torch.equal(first, second), where
    elif isinstance(first, dict):
        assert isinstance(second, dict) and first.keys() == second.keys(), where
        for key in first:
            assert_identical(first[key], second[key], f"{where}/{key}")
    elif isinstance(first, (list, tuple)):
        assert type(first) is type(second) and len(first) == len(second), where
        for index, (a, b) in enumerate(zip(first, second, strict=True)):
            assert_identical(a, b, f"{where}[{index}]")
    else:
        assert first == second, where


@pytest.mark.parametrize(
    ("config", "extra", "steps_per_batch"),
    [(PARAMETRIC, GAN, 2), ("diffharmony_iharmony4.yaml", EMA, 1)],
    ids=["gan-two-optimizers", "latent-diffusion-ema"],
)
def test_resume_at_an_epoch_boundary_is_bit_identical(
    config: str, extra: list[str], steps_per_batch: int, iharmony4_root: Path, tmp_path: Path
) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # Lightning's default logger, as users get it: the resumed run must stay in the same folder.
    logger = ["--trainer.logger=true"]
    assert fit(config, iharmony4_root, straight, 2, *extra, *logger) == 0
    assert fit(config, iharmony4_root, resumed, 1, *extra, *logger) == 0
    assert fit(config, iharmony4_root, resumed, 2, *extra, *logger, "--ckpt_path", "last") == 0
    assert [p.name for p in (resumed / "lightning_logs").iterdir()] == [Path(config).stem]

    uninterrupted, continued = last_of(straight), last_of(resumed)
    assert continued["epoch"] == uninterrupted["epoch"] == 1
    assert continued["global_step"] == uninterrupted["global_step"] == 2 * 2 * steps_per_batch
    assert len(uninterrupted["optimizer_states"]) == steps_per_batch
    if config != PARAMETRIC:
        assert uninterrupted["ema"]["optimization_step"] == 4
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "ema"):
        assert_identical(uninterrupted.get(key), continued.get(key), key)
    assert_identical(uninterrupted["callbacks"]["RandomState"], continued["callbacks"]["RandomState"])


def test_without_the_random_states_the_resumed_run_differs(
    iharmony4_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control of the test above: the configs do depend on the states RandomState restores.
    monkeypatch.setattr(RandomState, "load_state_dict", lambda self, state_dict: None)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert fit(PARAMETRIC, iharmony4_root, straight, 2, *GAN) == 0
    assert fit(PARAMETRIC, iharmony4_root, resumed, 1, *GAN) == 0
    assert fit(PARAMETRIC, iharmony4_root, resumed, 2, *GAN, "--ckpt_path", "last") == 0
    uninterrupted, continued = last_of(straight)["state_dict"], last_of(resumed)["state_dict"]
    assert any(not torch.equal(uninterrupted[name], continued[name]) for name in uninterrupted)


def test_a_checkpoint_written_during_validation_holds_the_live_weights(
    iharmony4_root: Path, tmp_path: Path
) -> None:
    from harmony.cli import make_cli

    one_batch = ["--trainer.limit_train_batches=1", "--trainer.limit_val_batches=0"]
    arguments = fit_arguments("diffharmony_iharmony4.yaml", iharmony4_root, tmp_path, 1, *EMA, *one_batch)
    cli = make_cli(arguments[1:], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    live = {name: p.detach().clone() for name, p in cli.model.ema_named_parameters()}
    cli.model.on_validation_epoch_start()  # the EMA weights in place, as during validation
    assert any(not torch.equal(live[name], p) for name, p in cli.model.ema_named_parameters())
    cli.trainer.save_checkpoint(tmp_path / "during_validation.ckpt")
    saved = torch.load(tmp_path / "during_validation.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[name], weights) for name, weights in live.items())


def test_ckpt_path_last_without_a_checkpoint_is_one_line(
    iharmony4_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert fit(PARAMETRIC, iharmony4_root, run, 1, "--ckpt_path", "last") == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("harmony:")] == [
        f"harmony: error: {run / 'checkpoints'}: no checkpoint to resume from (--ckpt_path last)"
    ]
    assert "Traceback" not in err
    assert not list(run.rglob("*.ckpt"))  # nothing trained from scratch


class RecordStart(Callback):
    """Records the global step each training run starts at."""

    steps: list[int] = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        RecordStart.steps.append(trainer.global_step)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signal_during_fit_saves_a_checkpoint_that_resumes(
    signum: signal.Signals, iharmony4_root: Path, tmp_path: Path
) -> None:
    run, no_validation = tmp_path / "run", "--trainer.limit_val_batches=0"
    arguments = fit_arguments(PARAMETRIC, iharmony4_root, run, 1000, no_validation)
    command = [sys.executable, "-m", "harmony", *arguments]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    checkpoint = run / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 60
        while not checkpoint.exists():  # the end of the first epoch
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        signalled = time.time()
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == EXIT_TERMINATED
    assert checkpoint.stat().st_mtime >= signalled  # written after the signal
    saved = torch.load(checkpoint, weights_only=True)
    (line,) = [line for line in err.splitlines() if line.startswith("harmony:")]
    assert line == (
        f"harmony: terminated at epoch {saved['epoch']}, step {saved['global_step']}: saved {checkpoint}; "
        "to resume, run the same command with --ckpt_path last"
    )

    if signum != signal.SIGTERM:
        return  # the same checkpoint as SIGTERM's: resuming it once is enough
    RecordStart.steps = []
    resume = ["--trainer.callbacks+=tests.test_resume.RecordStart", "--ckpt_path", "last"]
    assert fit(PARAMETRIC, iharmony4_root, run, saved["epoch"] + 2, no_validation, *resume) == 0
    assert RecordStart.steps == [saved["global_step"]]
    assert last_of(run)["global_step"] == 2 * (saved["epoch"] + 2)


def test_the_fsdp_config_builds_its_strategy_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from harmony.cli import HarmonyCLI, make_cli

    # Lightning's FSDP needs CUDA to start a Trainer: everything else is built, with tiny components.
    monkeypatch.setattr(HarmonyCLI, "instantiate_trainer", lambda self, **kwargs: None)
    tiny = [f"--model.init_args.{part}.init_args.config=tiny_inpainting" for part in ("unet", "vae")]
    tiny += ["--model.init_args.noise_scheduler.init_args.config=tiny_inpainting"]
    cli = make_cli(["--config", str(REPO_ROOT / "experiments" / "diffharmony_fsdp.yaml"), *tiny], run=False)
    trainer = cli.config_init.trainer
    assert trainer.precision == "bf16-mixed"
    assert isinstance(trainer.strategy, FSDPStrategy)
    policy = trainer.strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)
    # The blocks it names are the ones the model is built of.
    wrapped = {type(module).__name__ for module in cli.model.modules() if policy(module, recurse=False)}
    assert wrapped == {"BasicTransformerBlock", "ResnetBlock2D"}
    assert trainer.strategy.kwargs["use_orig_params"] is True
