"""Sampling: diffusers samplers by name, and the one denoising loop every latent method runs.

:func:`build_sampler` makes a sampler from the *training* schedule's config (same betas, same number of
training steps, same prediction type), so a method trains with DDPM and samples with any of
Euler-ancestral (DiffHarmony, R2R), Euler, DDIM (with its η) or DDPM.

:func:`sample_latents` is the loop. A method adapts it through two callables instead of forking it:

* ``predict_noise(model_input, t)`` builds the UNet input around the latents (condition channels, text,
  ControlNet residuals);
* an optional :class:`SamplingHook` sees every step (:class:`DenoisingStep`: index, timestep, latents,
  noise prediction, predicted x0) and may return a corrected noise prediction — classifier guidance
  (Li et al.'s appearance-consistency guidance through the decoder) is such a hook. A hook with
  ``requires_grad = True`` gets latents that require gradients and a predicted x0 that depends on them,
  so it can take ``torch.autograd.grad`` through its own computation (e.g. the VAE decoder); the noise
  prediction itself is treated as a constant, as classifier guidance does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

Generators = torch.Generator | list[torch.Generator] | None

SamplerName = Literal["euler_ancestral", "euler", "ddim", "ddpm"]
"""The samplers :func:`build_sampler` knows."""

_SAMPLERS: dict[str, tuple[type[SchedulerMixin], dict[str, object]]] = {
    # ``linspace`` is what the Stable-Diffusion pipelines get when they swap a DDIM/DDPM config for an
    # Euler sampler (the SD configs set no spacing), so 5 steps start at t = 999.
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {"timestep_spacing": "linspace"}),
    "euler": (EulerDiscreteScheduler, {"timestep_spacing": "linspace"}),
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
}


def build_sampler(noise_scheduler: SchedulerMixin, name: SamplerName = "euler_ancestral") -> SchedulerMixin:
    """A sampler matching a training noise schedule.

    Args:
        noise_scheduler: The training schedule (its betas, steps, prediction type and offset carry over).
        name: ``euler_ancestral``, ``euler``, ``ddim`` or ``ddpm``.

    Raises:
        ValueError: An unknown sampler name.
    """
    if name not in _SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(_SAMPLERS)}")
    cls, overrides = _SAMPLERS[name]
    accepted = set(inspect.signature(cls.__init__).parameters)
    config = {key: value for key, value in noise_scheduler.config.items() if key in accepted}
    return cls.from_config({**config, **overrides})


def seeded_generators(seed: int, count: int) -> list[torch.Generator]:
    """``count`` CPU generators all seeded with ``seed``.

    One generator per image makes an image's result independent of the batch it is in, and CPU
    generators make it independent of the device.
    """
    return [torch.Generator("cpu").manual_seed(seed) for _ in range(count)]


@dataclass(frozen=True)
class DenoisingStep:
    """What a :class:`SamplingHook` sees at one step of :func:`sample_latents`.

    All latents are in the DDPM parametrisation ``x_t = √ᾱ·x0 + √(1−ᾱ)·ε`` — what the UNet sees — whatever
    the sampler's own parametrisation (the Euler samplers keep ``x_t / √ᾱ``).

    Args:
        index: Step number, 0 for the noisiest.
        timestep: The diffusion timestep of this step.
        latents: ``x_t``, the UNet's input; it requires gradients when the hook asked for them.
        noise_prediction: The UNet's output, in the schedule's ``prediction_type`` (ε, v or x0).
        predicted_original: The x0 that output implies (differentiable in ``latents`` for a hook that asked).
        alpha_bar: ``ᾱ_t``, the signal fraction at this step (a 0-dim tensor).
        prediction_type: ``epsilon``, ``v_prediction`` or ``sample``.
    """

    index: int
    timestep: torch.Tensor
    latents: torch.Tensor
    noise_prediction: torch.Tensor
    predicted_original: torch.Tensor
    alpha_bar: torch.Tensor
    prediction_type: str

    def shift_noise(self, delta: torch.Tensor) -> torch.Tensor:
        """The model output whose implied noise ε is moved by ``delta`` (``x_t`` fixed).

        This is how classifier guidance corrects a step: ``ε̂ = ε − s·√(1−ᾱ)·∇ log p(y|x_t)`` (Dhariwal &
        Nichol 2021), whatever the model predicts: for v-prediction ``v`` moves by ``delta / √ᾱ``, for
        x0-prediction x0 moves by ``−√(1−ᾱ)/√ᾱ · delta``.
        """
        root_alpha = self.alpha_bar.sqrt()
        if self.prediction_type == "epsilon":
            return self.noise_prediction + delta
        if self.prediction_type == "v_prediction":
            return self.noise_prediction + delta / root_alpha
        if self.prediction_type == "sample":
            return self.noise_prediction - (1 - self.alpha_bar).sqrt() / root_alpha * delta
        raise ValueError(f"unknown prediction_type {self.prediction_type!r}")


class SamplingHook(Protocol):
    """Called at every step of :func:`sample_latents`.

    Returns a corrected noise prediction (same shape and prediction type as
    ``step.noise_prediction``), or ``None`` to keep it. Set ``requires_grad = True`` on the hook to get
    latents that require gradients.
    """

    def __call__(self, step: DenoisingStep) -> torch.Tensor | None:
        """Inspect (and optionally correct) one denoising step."""


def predicted_original(
    latents: torch.Tensor, model_output: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The clean latents ``x0`` a model output implies at ``x_t = latents``.

    Args:
        latents: ``x_t`` in the DDPM parametrisation.
        model_output: The UNet's output.
        alpha_bar: ``ᾱ_t``.
        prediction_type: ``epsilon``, ``v_prediction`` or ``sample``.
    """
    if prediction_type == "epsilon":
        return (latents - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * latents - (1 - alpha_bar).sqrt() * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def _alpha_bar(scheduler: SchedulerMixin, index: int, timestep: torch.Tensor) -> torch.Tensor:
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None:
        # Euler samplers work with σ = √((1−ᾱ)/ᾱ), at fractional timesteps.
        return 1.0 / (1.0 + sigmas[index].double() ** 2)
    return scheduler.alphas_cumprod[int(timestep)].double()


def _step_options(scheduler: SchedulerMixin, generator: Generators, eta: float) -> dict[str, object]:
    accepted = inspect.signature(scheduler.step).parameters
    options: dict[str, object] = {}
    if "generator" in accepted:
        options["generator"] = generator
    if "eta" in accepted:
        options["eta"] = eta
    return options


@torch.no_grad()
def sample_latents(
    predict_noise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler: SchedulerMixin,
    shape: Sequence[int],
    num_steps: int,
    generator: Generators = None,
    device: torch.device | str = "cpu",
    eta: float = 0.0,
    hook: SamplingHook | None = None,
    initial_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run a diffusers sampler from pure noise to clean latents.

    Args:
        predict_noise: ``(scaled noisy latents, t) -> model output``; the caller builds the UNet input
            around the latents (condition channels, text embedding, ControlNet residuals).
        scheduler: Any diffusers sampler (:func:`build_sampler`); stateful, so it is reset here.
        shape: ``B×C×h×w`` of the latents.
        num_steps: Denoising steps (5 in DiffHarmony, 10 in R2R).
        generator: Seeds the initial noise and the noise of every stochastic step.
        device: Device of the latents.
        eta: DDIM's η (0: deterministic; 1: as stochastic as DDPM); ignored by the other samplers.
        hook: Called at every step; may correct the noise prediction (see :class:`SamplingHook`).
        initial_noise: ``B×C×h×w`` standard normal noise to start from instead of drawing it.

    Returns:
        The ``float32`` denoised latents.
    """
    scheduler.set_timesteps(num_steps, device=device)
    if initial_noise is None:
        initial_noise = randn_tensor(
            tuple(shape), generator=generator, device=torch.device(device), dtype=torch.float32
        )
    latents = initial_noise.to(device=device, dtype=torch.float32) * scheduler.init_noise_sigma
    options = _step_options(scheduler, generator, eta)
    prediction_type = scheduler.config.prediction_type
    wants_grad = hook is not None and getattr(hook, "requires_grad", False)
    for index, timestep in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(latents, timestep)
        model_output = predict_noise(model_input, timestep)
        if hook is not None:
            alpha_bar = _alpha_bar(scheduler, index, timestep).to(model_input.device, model_input.dtype)
            with torch.set_grad_enabled(wants_grad):
                hook_latents = model_input.detach().requires_grad_(wants_grad)
                prediction = model_output.detach()
                original = predicted_original(hook_latents, prediction, alpha_bar, prediction_type)
                step = DenoisingStep(
                    index=index,
                    timestep=timestep,
                    latents=hook_latents,
                    noise_prediction=prediction,
                    predicted_original=original,
                    alpha_bar=alpha_bar,
                    prediction_type=prediction_type,
                )
                corrected = hook(step)
            if corrected is not None:
                model_output = corrected.detach()
        latents = scheduler.step(model_output.float(), timestep, latents, **options).prev_sample
    return latents
