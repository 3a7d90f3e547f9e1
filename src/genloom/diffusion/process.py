"""A denoiser's diffusion process as one config, and the two things done with it: training pairs and sampling.

`DiffusionConfig` is what a checkpoint records about how its denoiser was trained (objective, schedule,
prediction type, caption dropout), so sampling reads it instead of trusting flags: a sampler that does not fit
the objective, more steps than training timesteps or guidance without caption dropout are refused here, with one
line, instead of producing noise.

- Training: `training_times` draws one noise level per sample, `training_example` noises x_0 and names the
  target and the loss weight (min-SNR-γ for DDPM, when set).
- Sampling: `sampling_plan` lists the noise levels a sampler visits (cut short for img2img by a strength);
  `sampler_step` moves a batch one step down it. Both are pure functions of tensors and indices, so a batch
  may hold samples at different steps (a step's timesteps can be per-sample tensors).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from genloom.diffusion import flow
from genloom.diffusion.samplers import SolverHistory, ddim_step, ddpm_step, dpm_sigma, dpm_x0, dpmpp_2m_step
from genloom.diffusion.schedules import (
    BetaSchedule,
    Prediction,
    Spacing,
    add_noise,
    alphas_cumprod,
    at,
    inference_timesteps,
    make_betas,
    min_snr_weights,
    split_prediction,
    training_target,
)

Objective = Literal["ddpm", "flow"]
Sampler = Literal["ddpm", "ddim", "dpm++", "euler"]
SAMPLERS: dict[str, tuple[Sampler, ...]] = {"ddpm": ("dpm++", "ddim", "ddpm"), "flow": ("euler",)}  # default first


@dataclass
class DiffusionConfig:
    objective: Objective = "ddpm"  # ddpm: noise x_0 along a β schedule; flow: the straight path to noise
    prediction: Prediction = "epsilon"  # what a ddpm denoiser outputs (flow: always the velocity ε - x_0)
    beta_schedule: BetaSchedule = "linear"
    train_timesteps: int = 1000  # T: ddpm's discrete steps; flow feeds the model σ·T
    beta_start: float = 1e-4
    beta_end: float = 0.02
    flow_shift: float = 1.0  # SD3's sampling shift of the flow's noise levels (> 1: more steps at high noise)
    logit_mean: float = 0.0  # flow training draws σ = sigmoid(N(logit_mean, logit_std²))
    logit_std: float = 1.0
    min_snr_gamma: float = 0.0  # ddpm: min-SNR-γ loss weighting (Hang et al. 2023: γ = 5); 0: off
    caption_dropout: float = 0.1  # share of training captions replaced by the empty one (for guidance)

    def __post_init__(self) -> None:
        if self.objective not in SAMPLERS:
            raise ValueError(f"unknown objective {self.objective!r}; choose ddpm or flow")
        if self.prediction not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unknown prediction {self.prediction!r}; choose epsilon, v_prediction or sample")
        if self.beta_schedule not in ("linear", "scaled_linear", "cosine"):
            raise ValueError(f"unknown beta schedule {self.beta_schedule!r}; choose linear, scaled_linear or cosine")
        if self.train_timesteps < 2:
            raise ValueError(f"train_timesteps ({self.train_timesteps}) must be at least 2")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start ({self.beta_start}) < beta_end ({self.beta_end}) < 1")
        if not self.flow_shift > 0 or not self.logit_std > 0 or self.min_snr_gamma < 0:
            raise ValueError(f"flow_shift ({self.flow_shift}) and logit_std ({self.logit_std}) must be > 0 and "
                             f"min_snr_gamma ({self.min_snr_gamma}) >= 0")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout ({self.caption_dropout}) must be in [0, 1)")

    def alphas_cumprod(self) -> Tensor:
        """ᾱ_t (T,) of the β schedule (float32)."""
        return alphas_cumprod(make_betas(self.beta_schedule, self.train_timesteps, self.beta_start, self.beta_end))


# ---- training ----------------------------------------------------------------------------------------------


def training_times(config: DiffusionConfig, batch: int, generator: torch.Generator) -> Tensor:
    """One noise level per sample (B,): a ddpm timestep (long, uniform in 0..T-1) or a flow σ (float in (0, 1))."""
    if config.objective == "flow":
        return flow.logit_normal_sigmas(batch, config.logit_mean, config.logit_std, generator)
    return torch.randint(config.train_timesteps, (batch,), generator=generator)


@dataclass
class TrainingExample:
    noisy: Tensor  # the model's input (B, C, H, W)
    model_time: Tensor  # (B,) float, the timestep the model is told
    target: Tensor  # what it should output, like noisy
    weight: Tensor  # (B,) per-sample loss weight


def training_example(config: DiffusionConfig, ac: Tensor, x0: Tensor, noise: Tensor, times: Tensor
                     ) -> TrainingExample:
    """x_0 noised to `times` (from `training_times`), with the target and loss weight of the config's objective;
    `ac` = config.alphas_cumprod() on x0's device."""
    if config.objective == "flow":
        sigma = times.to(x0.dtype).view(-1, 1, 1, 1)
        return TrainingExample(flow.interpolate(x0, noise, sigma), times.float() * config.train_timesteps,
                               flow.velocity_target(x0, noise), torch.ones_like(times, dtype=torch.float32))
    weight = (min_snr_weights(ac, times, config.prediction, config.min_snr_gamma) if config.min_snr_gamma > 0
              else torch.ones(times.shape, device=x0.device))
    return TrainingExample(add_noise(ac, x0, noise, times), times.float(),
                           training_target(config.prediction, ac, x0, noise, times), weight.float())


# ---- sampling ----------------------------------------------------------------------------------------------


def check_sampler(config: DiffusionConfig, sampler: str | None) -> Sampler:
    """The sampler to use (None: the objective's default), or a one-line ValueError when it does not fit."""
    allowed = SAMPLERS[config.objective]
    if sampler is None:
        return allowed[0]
    if sampler not in allowed:
        raise ValueError(f"sampler {sampler!r} does not fit a model trained with the {config.objective} objective; "
                         f"choose {' or '.join(allowed)}")
    return sampler


def check_guidance(config: DiffusionConfig, guidance_scale: float) -> None:
    """A ValueError for guidance (scale != 1) on a denoiser that never learned the unconditional case."""
    if guidance_scale != 1.0 and config.caption_dropout == 0:
        raise ValueError(f"guidance scale {guidance_scale:g} needs a model trained with caption dropout; this one "
                         "was trained without (use --guidance-scale 1)")


@dataclass
class SamplingPlan:
    """The noise levels a sampler visits, noisiest first: ddpm timesteps (int) ending at -1, or flow σ ending
    at 0. Step i goes from levels[i] to levels[i + 1]."""

    levels: list[float] = field(default_factory=list)
    objective: Objective = "ddpm"

    @property
    def steps(self) -> int:
        return len(self.levels) - 1

    def model_time(self, i: int, config: DiffusionConfig) -> float:
        """The timestep the denoiser is told at step i."""
        return self.levels[i] * config.train_timesteps if self.objective == "flow" else self.levels[i]


def sampling_plan(config: DiffusionConfig, steps: int, spacing: Spacing = "trailing", strength: float = 1.0
                  ) -> SamplingPlan:
    """The plan of a `steps`-step sampler; strength < 1 (img2img) keeps only its last round(steps·strength)
    steps, as diffusers' img2img pipelines do, so the init image's noised latent is where it starts."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength ({strength}) must be in (0, 1]")
    if steps > config.train_timesteps:
        raise ValueError(f"steps ({steps}) cannot exceed the {config.train_timesteps} timesteps the model was "
                         "trained on")
    if config.objective == "flow":
        # diffusers' FlowMatchEulerDiscreteScheduler: σ from 1 to 1/T, shifted, then a last step to 0.
        sigmas = flow.shift_sigmas(torch.linspace(1.0, 1.0 / config.train_timesteps, steps, dtype=torch.float64),
                                   config.flow_shift)
        levels = [*sigmas.tolist(), 0.0]
    else:
        levels = [float(t) for t in inference_timesteps(config.train_timesteps, steps, spacing)] + [-1.0]
    kept = max(1, min(steps, round(steps * strength)))
    return SamplingPlan(levels[steps - kept :], config.objective)


def start_sample(config: DiffusionConfig, ac: Tensor, plan: SamplingPlan, noise: Tensor, x0: Tensor | None
                 ) -> Tensor:
    """Where sampling starts: pure noise, or (img2img) the init latent x0 noised to the plan's first level."""
    if x0 is None:
        return noise
    level = plan.levels[0]
    if config.objective == "flow":
        return flow.interpolate(x0, noise, level)
    return add_noise(ac, x0, noise, int(level))


@dataclass
class StepResult:
    sample: Tensor  # the next sample
    x0: Tensor  # the denoiser's current estimate of the clean latent (for previews)
    history: SolverHistory | None  # DPM-Solver++'s memory for the next step


def sampler_step(config: DiffusionConfig, ac: Tensor, sampler: Sampler, plan: SamplingPlan, i: int,
                 sample: Tensor, output: Tensor, history: SolverHistory | None = None,
                 noise: Tensor | None = None, eta: float = 0.0) -> StepResult:
    """Step i of `plan` with the denoiser's `output` at `sample`. noise: standard normal like sample, used by
    ddpm (and ddim with eta > 0) on every step but the last."""
    level, next_level = plan.levels[i], plan.levels[i + 1]
    if config.objective == "flow":
        x0 = sample - level * output  # x_σ = (1 - σ) x_0 + σ ε and v = ε - x_0
        return StepResult(flow.euler_step(sample, output, level, next_level), x0, None)
    t, t_prev = int(level), int(next_level)
    if sampler == "dpm++":
        x0 = dpm_x0(ac, sample, output, t, config.prediction)
        out, history = dpmpp_2m_step(sample, x0, dpm_sigma(ac, t, sample), dpm_sigma(ac, t_prev, sample), history)
        return StepResult(out, x0, history)
    x0, _ = split_prediction(config.prediction, at(ac, t, sample), sample, output)
    last = t_prev < 0
    if sampler == "ddpm":
        return StepResult(ddpm_step(ac, sample, output, t, t_prev, config.prediction, None if last else noise),
                          x0, None)
    return StepResult(ddim_step(ac, sample, output, t, t_prev, config.prediction, 0.0 if last else eta, noise),
                      x0, None)
