"""The process layer: sampling plans equal diffusers' timesteps and sigmas, whole loops through `sampler_step`
equal diffusers' schedulers, training examples follow the objective, and contradicting settings are refused."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from genloom.diffusion import flow
from genloom.diffusion.process import (
    DiffusionConfig,
    check_guidance,
    check_sampler,
    sampler_step,
    sampling_plan,
    start_sample,
    training_example,
    training_times,
)
from genloom.diffusion.schedules import add_noise, min_snr_weights, velocity

SHAPE = (2, 4, 8, 8)


def fake_model(sample: torch.Tensor, t: float) -> torch.Tensor:
    return 0.3 * sample + torch.sin(sample * 2.0 + t / 100.0)


def test_flow_plan_equals_diffusers_sigmas() -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(12)
    plan = sampling_plan(DiffusionConfig(objective="flow"), 12)
    torch.testing.assert_close(torch.tensor(plan.levels, dtype=torch.float64), scheduler.sigmas.double(), atol=1e-6,
                               rtol=0)
    assert plan.model_time(0, DiffusionConfig(objective="flow")) == pytest.approx(1000.0)


def _ddim(spacing: str) -> DDIMScheduler:
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                              prediction_type="v_prediction", timestep_spacing=spacing, set_alpha_to_one=True)
    scheduler.set_timesteps(15)
    return scheduler


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_plans_visit_diffusers_timesteps(spacing) -> None:
    plan = sampling_plan(DiffusionConfig(), 15, spacing)
    assert plan.levels[:-1] == [float(t) for t in _ddim(spacing).timesteps.tolist()] and plan.levels[-1] == -1


def test_ddim_loop_through_the_process_equals_diffusers() -> None:
    # Leading spacing only: for the others diffusers' DDIM steps to t - T // steps, which is not the next timestep
    # it visits (999 -> 933, then from 932); genloom steps to the next timestep, and to ᾱ = 1 at the end.
    config = DiffusionConfig(prediction="v_prediction")
    scheduler = _ddim("leading")
    plan = sampling_plan(config, 15, "leading")
    ac = config.alphas_cumprod()
    theirs = ours = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    for i, t in enumerate(scheduler.timesteps):
        theirs = scheduler.step(fake_model(theirs, float(t)), t, theirs).prev_sample
        ours = sampler_step(config, ac, "ddim", plan, i, ours, fake_model(ours, plan.model_time(i, config))).sample
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_dpm_loop_through_the_process_equals_diffusers() -> None:
    config = DiffusionConfig()
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                            algorithm_type="dpmsolver++", solver_order=2,
                                            timestep_spacing="trailing")
    scheduler.set_timesteps(10)
    plan = sampling_plan(config, 10, "trailing")
    ac = config.alphas_cumprod()
    theirs = ours = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    history = None
    for i, t in enumerate(scheduler.timesteps):
        theirs = scheduler.step(fake_model(theirs, float(t)), t, theirs).prev_sample
        step = sampler_step(config, ac, "dpm++", plan, i, ours, fake_model(ours, plan.model_time(i, config)), history)
        ours, history = step.sample, step.history
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_img2img_plan_keeps_the_last_steps_and_starts_from_the_noised_latent() -> None:
    config = DiffusionConfig()
    full = sampling_plan(config, 10)
    half = sampling_plan(config, 10, strength=0.5)
    assert half.steps == 5 and half.levels == full.levels[5:]
    assert sampling_plan(config, 10, strength=0.01).steps == 1  # at least one step
    ac = config.alphas_cumprod()
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    torch.testing.assert_close(start_sample(config, ac, half, noise, x0), add_noise(ac, x0, noise, int(half.levels[0])))
    assert start_sample(config, ac, half, noise, None) is noise
    flows = DiffusionConfig(objective="flow")
    plan = sampling_plan(flows, 10, strength=0.3)
    torch.testing.assert_close(start_sample(flows, ac, plan, noise, x0), flow.interpolate(x0, noise, plan.levels[0]))


def test_training_examples_follow_the_objective() -> None:
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    config = DiffusionConfig(prediction="v_prediction", min_snr_gamma=5.0)
    ac = config.alphas_cumprod()
    times = training_times(config, 2, torch.Generator().manual_seed(0))
    assert times.dtype == torch.long and ((times >= 0) & (times < 1000)).all()
    example = training_example(config, ac, x0, noise, times)
    torch.testing.assert_close(example.noisy, add_noise(ac, x0, noise, times))
    torch.testing.assert_close(example.target, velocity(ac, x0, noise, times))
    torch.testing.assert_close(example.weight, min_snr_weights(ac, times, "v_prediction", 5.0))
    flows = DiffusionConfig(objective="flow")
    sigmas = training_times(flows, 2, torch.Generator().manual_seed(0))
    assert sigmas.is_floating_point() and ((sigmas > 0) & (sigmas < 1)).all()
    example = training_example(flows, ac, x0, noise, sigmas)
    torch.testing.assert_close(example.noisy, flow.interpolate(x0, noise, sigmas.view(-1, 1, 1, 1)))
    torch.testing.assert_close(example.target, noise - x0)
    torch.testing.assert_close(example.model_time, sigmas * 1000)


def test_contradicting_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="sampler 'euler' does not fit a model trained with the ddpm objective"):
        check_sampler(DiffusionConfig(), "euler")
    with pytest.raises(ValueError, match="choose euler"):
        check_sampler(DiffusionConfig(objective="flow"), "dpm++")
    assert check_sampler(DiffusionConfig(), None) == "dpm++" and check_sampler(DiffusionConfig("flow"), None) == "euler"
    with pytest.raises(ValueError, match="needs a model trained with caption dropout"):
        check_guidance(DiffusionConfig(caption_dropout=0.0), 3.0)
    check_guidance(DiffusionConfig(caption_dropout=0.0), 1.0)  # plain conditional sampling needs no dropout
    with pytest.raises(ValueError, match=r"steps \(1001\) cannot exceed the 1000 timesteps"):
        sampling_plan(DiffusionConfig(), 1001)
    with pytest.raises(ValueError, match="strength"):
        sampling_plan(DiffusionConfig(), 10, strength=0.0)
    with pytest.raises(ValueError, match="unknown objective"):
        DiffusionConfig(objective="score")  # type: ignore[arg-type]
