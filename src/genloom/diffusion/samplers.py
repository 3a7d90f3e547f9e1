"""Sampler steps: x_t -> x_{t_prev} from one model output, as pure functions (a batch may mix timesteps).

- DDPM (Ho et al. 2020, eq. 7): the posterior mean of x_{t_prev} given x_t and the predicted x_0, plus noise of
  the posterior variance β̃ ("fixed_small").
- DDIM (Song et al. 2021, eq. 12): deterministic at η = 0; η = 1 adds DDPM's amount of noise.
- DPM-Solver++(2M) (Lu et al. 2022): a second-order multistep solver in the half-log-SNR λ = log(α/σ) on the
  predicted x_0, first order on its first step and on the last (to σ = 0), as diffusers' `lower_order_final`.

Predicted x_0 is never clipped: on latents, `clip_sample` is the best-known way to get noise out of DDIM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from genloom.diffusion.schedules import Prediction, at, split_prediction


def ddpm_step(alphas_cumprod: Tensor, sample: Tensor, model_output: Tensor, t: int | Tensor, t_prev: int | Tensor,
              prediction: Prediction, noise: Tensor | None) -> Tensor:
    """One ancestral DDPM step. noise: standard normal like `sample`, used where t_prev >= 0 (None at the end)."""
    a_t, a_prev = at(alphas_cumprod, t, sample), at(alphas_cumprod, t_prev, sample)
    x0, _ = split_prediction(prediction, a_t, sample, model_output)
    alpha_t = a_t / a_prev  # the one-step α between the two timesteps
    beta_t = 1 - alpha_t
    mean = (a_prev.sqrt() * beta_t / (1 - a_t)) * x0 + (alpha_t.sqrt() * (1 - a_prev) / (1 - a_t)) * sample
    if noise is None:
        return mean
    variance = ((1 - a_prev) / (1 - a_t) * beta_t).clamp(min=1e-20)
    has_noise = (torch.as_tensor(t, device=sample.device) > 0).to(sample.dtype)
    if has_noise.dim() > 0:
        has_noise = has_noise.view(-1, *([1] * (sample.dim() - 1)))
    return mean + has_noise * variance.sqrt() * noise


def ddim_step(alphas_cumprod: Tensor, sample: Tensor, model_output: Tensor, t: int | Tensor, t_prev: int | Tensor,
              prediction: Prediction, eta: float = 0.0, noise: Tensor | None = None) -> Tensor:
    """One DDIM step. A negative t_prev is the end of sampling (ᾱ = 1: the predicted x_0). eta > 0 needs noise."""
    a_t, a_prev = at(alphas_cumprod, t, sample), at(alphas_cumprod, t_prev, sample)
    x0, eps = split_prediction(prediction, a_t, sample, model_output)
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * variance.sqrt()
    out = a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * eps
    if eta > 0:
        if noise is None:
            raise ValueError("DDIM with eta > 0 adds noise: pass `noise`")
        out = out + std * noise
    return out


def dpm_sigma(alphas_cumprod: Tensor, t: int | Tensor, like: Tensor) -> Tensor:
    """σ_t / α_t = sqrt((1 - ᾱ_t) / ᾱ_t), the noise level DPM-Solver steps in (0 for a negative t: the end)."""
    a = at(alphas_cumprod, t, like)
    return ((1 - a) / a).sqrt()


@dataclass
class SolverHistory:
    """What DPM-Solver++(2M) carries from one step to the next: the last predicted x_0 and its noise level."""

    x0: Tensor
    sigma: Tensor


def dpmpp_2m_step(sample: Tensor, x0: Tensor, sigma: Tensor, sigma_next: Tensor, history: SolverHistory | None,
                  first_order: bool = False) -> tuple[Tensor, SolverHistory]:
    """One DPM-Solver++(2M) step (diffusers' "midpoint" form) from x_t = `sample` at σ = `sigma` to `sigma_next`,
    given the predicted x_0. First order without a history, with `first_order` (the last steps), or when
    sigma_next is 0 (the step lands on x_0). Returns the next sample and the history for the next step.

    sigma, sigma_next: σ/α noise levels (see `dpm_sigma`), broadcastable to the sample."""
    alpha_t, sigma_t = _alpha_sigma(sigma_next)
    alpha_s, sigma_s = _alpha_sigma(sigma)
    lambda_t, lambda_s = torch.log(alpha_t) - torch.log(sigma_t), torch.log(alpha_s) - torch.log(sigma_s)
    h = lambda_t - lambda_s
    decay = alpha_t * (torch.exp(-h) - 1.0)
    if history is None or first_order or bool((sigma_next == 0).all()):
        out = (sigma_t / sigma_s) * sample - decay * x0
    else:
        alpha_p, sigma_p = _alpha_sigma(history.sigma)
        r = (lambda_s - (torch.log(alpha_p) - torch.log(sigma_p))) / h
        d1 = (x0 - history.x0) / r
        out = (sigma_t / sigma_s) * sample - decay * x0 - 0.5 * decay * d1
    return out, SolverHistory(x0, sigma)


def _alpha_sigma(sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(α_t, σ_t) of a σ/α noise level: α = 1 / sqrt(σ² + 1)."""
    alpha = 1 / (sigma**2 + 1).sqrt()
    return alpha, sigma * alpha


def dpm_x0(alphas_cumprod: Tensor, sample: Tensor, model_output: Tensor, t: int | Tensor, prediction: Prediction
           ) -> Tensor:
    """The predicted x_0 DPM-Solver++ steps on, computed from σ/α as diffusers does."""
    sigma = dpm_sigma(alphas_cumprod, t, sample)
    alpha_t, sigma_t = _alpha_sigma(sigma)
    if prediction == "epsilon":
        return (sample - sigma_t * model_output) / alpha_t
    if prediction == "v_prediction":
        return alpha_t * sample - sigma_t * model_output
    return model_output
