"""Rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2022; Esser et al. 2024, "SD3"): a straight path
x_σ = (1 - σ) x_0 + σ ε from data (σ = 0) to noise (σ = 1), a model that predicts the velocity ε - x_0, and Euler
steps along it. σ = t / T for training timesteps t.
"""

from __future__ import annotations

import torch
from torch import Tensor


def shift_sigmas(sigmas: Tensor, shift: float) -> Tensor:
    """SD3's timestep shift: σ' = s σ / (1 + (s - 1) σ); s > 1 spends more steps at high noise (bigger images)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def interpolate(x0: Tensor, noise: Tensor, sigma: Tensor | float) -> Tensor:
    """x_σ on the straight path; sigma broadcastable to x0 (one per sample: (B, 1, 1, 1))."""
    return (1 - sigma) * x0 + sigma * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """d x_σ / dσ = ε - x_0: what the model learns."""
    return noise - x0


def logit_normal_sigmas(batch: int, mean: float = 0.0, std: float = 1.0, generator: torch.Generator | None = None,
                        device: torch.device | str = "cpu") -> Tensor:
    """Training noise levels σ = sigmoid(N(mean, std²)) (SD3 §3.1): more weight in the middle of the path."""
    return torch.sigmoid(mean + std * torch.randn(batch, generator=generator, device=device))


def euler_step(sample: Tensor, velocity: Tensor, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
    """x_{σ_next} = x_σ + (σ_next - σ) v."""
    return sample + (sigma_next - sigma) * velocity
