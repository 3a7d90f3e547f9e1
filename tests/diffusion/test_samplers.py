"""genloom's diffusion steps against diffusers' schedulers: the same sample, model outputs, timesteps (and noise)
through a whole sampling loop give the same samples to 1e-5."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from genloom.diffusion import flow
from genloom.diffusion.guidance import guide
from genloom.diffusion.samplers import ddim_step, ddpm_step, dpm_sigma, dpm_x0, dpmpp_2m_step
from genloom.diffusion.schedules import (
    add_noise,
    alphas_cumprod,
    inference_timesteps,
    make_betas,
    min_snr_weights,
    split_prediction,
    training_target,
)

SHAPE = (2, 4, 8, 8)  # a batch of 8x8x4 latents
T = 1000


def fake_model(sample: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for a denoiser: any function of (x_t, t) serves to compare two samplers."""
    return 0.3 * sample + torch.sin(sample * 2.0 + float(t) / 100.0)


def _schedule(kind):
    diffusers_name = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}[kind]
    kw = {"beta_start": 0.00085, "beta_end": 0.012} if kind == "scaled_linear" else {}
    return diffusers_name, kw, alphas_cumprod(make_betas(kind, T, **kw) if kw else make_betas(kind, T))


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
def test_schedules_equal_diffusers(kind):
    name, kw, ours = _schedule(kind)
    theirs = DDPMScheduler(num_train_timesteps=T, beta_schedule=name, **kw).alphas_cumprod
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [10, 20, 50])
def test_inference_timesteps_equal_diffusers(spacing, steps):
    scheduler = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    assert inference_timesteps(T, steps, spacing) == scheduler.timesteps.tolist()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
def test_ddim_loop_equals_diffusers(prediction, kind):
    name, kw, ac = _schedule(kind)
    scheduler = DDIMScheduler(num_train_timesteps=T, beta_schedule=name, prediction_type=prediction,
                              clip_sample=False, set_alpha_to_one=True, **kw)
    scheduler.set_timesteps(20)
    ours = theirs = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    ratio = T // 20
    for t in scheduler.timesteps.tolist():
        theirs = scheduler.step(fake_model(theirs, t), t, theirs).prev_sample
        ours = ddim_step(ac, ours, fake_model(ours, t), t, t - ratio, prediction)  # diffusers' previous timestep
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_ddim_with_eta_equals_diffusers():
    _, _, ac = _schedule("linear")
    scheduler = DDIMScheduler(num_train_timesteps=T, clip_sample=False)
    scheduler.set_timesteps(10)
    ours = theirs = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    noises = torch.randn(10, *SHAPE, generator=torch.Generator().manual_seed(2))
    for i, t in enumerate(scheduler.timesteps.tolist()):
        theirs = scheduler.step(fake_model(theirs, t), t, theirs, eta=0.7, variance_noise=noises[i]).prev_sample
        ours = ddim_step(ac, ours, fake_model(ours, t), t, t - T // 10, "epsilon", eta=0.7, noise=noises[i])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddpm_loop_equals_diffusers(prediction):
    _, _, ac = _schedule("linear")
    scheduler = DDPMScheduler(num_train_timesteps=T, prediction_type=prediction, clip_sample=False)
    scheduler.set_timesteps(25)
    timesteps = scheduler.timesteps.tolist()
    ours = theirs = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    generator_theirs, generator_ours = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    for i, t in enumerate(timesteps):
        theirs = scheduler.step(fake_model(theirs, t), t, theirs, generator=generator_theirs).prev_sample
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        noise = torch.randn(SHAPE, generator=generator_ours) if t > 0 else None  # diffusers draws only for t > 0
        ours = ddpm_step(ac, ours, fake_model(ours, t), t, t_prev, prediction, noise)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_dpm_solver_pp_2m_loop_equals_diffusers(steps, prediction):
    name, kw, ac = _schedule("scaled_linear")
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=T, beta_schedule=name, prediction_type=prediction,
                                            algorithm_type="dpmsolver++", solver_order=2, **kw)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.tolist()
    ours = theirs = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    history = None
    for i, t in enumerate(timesteps):
        theirs = scheduler.step(fake_model(theirs, t), t, theirs).prev_sample
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        x0 = dpm_x0(ac, ours, fake_model(ours, t), t, prediction)
        # First order on the first step (no history) and on the last (to σ = 0), second order between.
        ours, history = dpmpp_2m_step(ours, x0, dpm_sigma(ac, t, ours), dpm_sigma(ac, t_prev, ours), history,
                                      first_order=t_prev < 0)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_euler_loop_equals_diffusers(shift):
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift)
    scheduler.set_timesteps(20)
    sigmas = scheduler.sigmas.tolist()
    ours = theirs = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6))
    for i, t in enumerate(scheduler.timesteps):
        theirs = scheduler.step(fake_model(theirs, float(t)), t, theirs).prev_sample
        ours = flow.euler_step(ours, fake_model(ours, float(t)), sigmas[i], sigmas[i + 1])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_a_batch_may_hold_samples_at_different_steps():
    _, _, ac = _schedule("linear")
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    t, t_prev = torch.tensor([900, 300]), torch.tensor([850, -1])
    out = ddim_step(ac, x, fake_model(x, 0), t, t_prev, "epsilon")
    for row in range(2):
        alone = ddim_step(ac, x[row : row + 1], fake_model(x, 0)[row : row + 1], int(t[row]), int(t_prev[row]),
                          "epsilon")
        torch.testing.assert_close(out[row : row + 1], alone)


def test_training_targets_invert_to_x0_and_noise():
    _, _, ac = _schedule("cosine")
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = torch.tensor([10, 700])
    xt = add_noise(ac, x0, noise, t)
    a = ac[t].view(-1, 1, 1, 1)
    for prediction in ("epsilon", "v_prediction", "sample"):
        target = training_target(prediction, ac, x0, noise, t)
        x0_hat, eps_hat = split_prediction(prediction, a, xt, target)
        torch.testing.assert_close(x0_hat, x0, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(eps_hat, noise, rtol=1e-4, atol=1e-4)
    sigma = torch.tensor([0.25, 0.75]).view(-1, 1, 1, 1)
    path = flow.interpolate(x0, noise, sigma)
    torch.testing.assert_close(path + (1 - sigma) * flow.velocity_target(x0, noise), noise)  # Euler to σ = 1


def test_min_snr_weights_and_guidance():
    _, _, ac = _schedule("linear")
    t = torch.tensor([0, 999])
    snr = ac[t] / (1 - ac[t])
    torch.testing.assert_close(min_snr_weights(ac, t, "epsilon", 5.0), snr.clamp(max=5.0) / snr)
    assert min_snr_weights(ac, t, "epsilon")[1] == 1.0  # low SNR: the plain ε loss
    cond, uncond = torch.tensor([2.0]), torch.tensor([1.0])
    assert guide(cond, uncond, 1.0) == cond and guide(cond, uncond, 0.0) == uncond and guide(cond, uncond, 3.0) == 4.0
