"""Noise schedules (Ho et al. 2020; Nichol & Dhariwal 2021), inference timesteps, noising and loss weights.

`alphas_cumprod[t]` is ᾱ_t: x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε. Schedules are computed in float32 as diffusers
computes them, so the same configuration gives the same numbers.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

BetaSchedule = Literal["linear", "scaled_linear", "cosine"]
Spacing = Literal["leading", "trailing", "linspace"]
Prediction = Literal["epsilon", "v_prediction", "sample"]


def make_betas(kind: BetaSchedule, num_train_timesteps: int = 1000, beta_start: float = 1e-4,
               beta_end: float = 2e-2, max_beta: float = 0.999) -> Tensor:
    """β_1..β_T (T,) float32: linear (DDPM), scaled_linear (Stable Diffusion: linear in sqrt β) or cosine (improved
    DDPM's ᾱ(t) = cos²((t + 0.008) / 1.008 · π/2), each β capped at max_beta)."""
    n = num_train_timesteps
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float32) ** 2
    if kind == "cosine":
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)],
                            dtype=torch.float32)
    raise ValueError(f"unknown beta schedule {kind!r}; choose linear, scaled_linear or cosine")


def alphas_cumprod(betas: Tensor) -> Tensor:
    """ᾱ_t = Π_{s<=t} (1 - β_s), (T,)."""
    return torch.cumprod(1.0 - betas, dim=0)


def inference_timesteps(num_train_timesteps: int, steps: int, spacing: Spacing = "leading",
                        steps_offset: int = 0) -> list[int]:
    """The training timesteps a `steps`-step sampler visits, last (noisiest) first, spaced as Table 2 of Lin et al.
    2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"): leading (DDPM/DDIM's, never reaching
    T-1), trailing (starting at T-1: the spacing to use with few steps) or linspace."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps ({steps}) must be in 1..{num_train_timesteps}, the training timesteps")
    if spacing == "leading":
        every = num_train_timesteps // steps
        return [i * every + steps_offset for i in reversed(range(steps))]
    if spacing == "trailing":
        stride = num_train_timesteps / steps
        return [round(num_train_timesteps - i * stride) - 1 for i in range(steps)]
    if spacing == "linspace":
        return np.linspace(0, num_train_timesteps - 1, steps).round()[::-1].astype(np.int64).tolist()
    raise ValueError(f"unknown timestep spacing {spacing!r}; choose leading, trailing or linspace")


def at(values: Tensor, t: int | Tensor, like: Tensor) -> Tensor:
    """values[t] shaped to broadcast over `like` (B, ...): t is one timestep, or one per sample (B,); a negative t
    means "before the first step", where ᾱ is 1."""
    index = torch.as_tensor(t, device=values.device)
    one = torch.ones((), dtype=values.dtype, device=values.device)
    picked = torch.where(index >= 0, values[index.clamp(min=0)], one)
    if picked.dim() == 0:
        return picked.to(like.dtype)
    return picked.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def add_noise(alphas_cumprod: Tensor, x0: Tensor, noise: Tensor, t: int | Tensor) -> Tensor:
    """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε."""
    a = at(alphas_cumprod, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def velocity(alphas_cumprod: Tensor, x0: Tensor, noise: Tensor, t: int | Tensor) -> Tensor:
    """The v-prediction target (Salimans & Ho 2022): v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0."""
    a = at(alphas_cumprod, t, x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def training_target(prediction: Prediction, alphas_cumprod: Tensor, x0: Tensor, noise: Tensor,
                    t: int | Tensor) -> Tensor:
    """What a denoiser of `prediction` type learns to output at x_t."""
    if prediction == "epsilon":
        return noise
    if prediction == "v_prediction":
        return velocity(alphas_cumprod, x0, noise, t)
    if prediction == "sample":
        return x0
    raise ValueError(f"unknown prediction type {prediction!r}; choose epsilon, v_prediction or sample")


def split_prediction(prediction: Prediction, alpha_cumprod_t: Tensor, sample: Tensor, model_output: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """(predicted x_0, predicted ε) from a model output of `prediction` type at x_t = `sample`."""
    a, b = alpha_cumprod_t, 1 - alpha_cumprod_t
    if prediction == "epsilon":
        return (sample - b.sqrt() * model_output) / a.sqrt(), model_output
    if prediction == "v_prediction":
        return a.sqrt() * sample - b.sqrt() * model_output, a.sqrt() * model_output + b.sqrt() * sample
    if prediction == "sample":
        return model_output, (sample - a.sqrt() * model_output) / b.sqrt()
    raise ValueError(f"unknown prediction type {prediction!r}; choose epsilon, v_prediction or sample")


def min_snr_weights(alphas_cumprod: Tensor, t: Tensor, prediction: Prediction, gamma: float = 5.0) -> Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023), (B,): min(SNR, γ) / SNR for ε-prediction, min(SNR, γ) /
    (SNR + 1) for v-prediction, min(SNR, γ) for x_0-prediction, with SNR_t = ᾱ_t / (1 - ᾱ_t)."""
    a = alphas_cumprod[t]
    snr = a / (1 - a)
    clipped = snr.clamp(max=gamma)
    if prediction == "epsilon":
        return clipped / snr
    if prediction == "v_prediction":
        return clipped / (snr + 1)
    return clipped
