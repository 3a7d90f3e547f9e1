"""Step-level batching of diffusion requests: a request that joins a running batch, with its own steps, sampler,
guidance and img2img strength, gets the latents it gets alone; rows leave when done or removed; capacity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_diffuse import CAPTIONS, TOKENIZER, _models

from genloom.diffusion.process import DiffusionConfig
from genloom.errors import GenloomError
from genloom.generate.diffuse import init_latents, sample_latents
from genloom.generate.diffusion_batch import DiffusionBatch, DiffusionSampling
from genloom.generate.imagine import encode_image_prompts, row_generators

# (caption, images, sampling, guidance, negative prompt, seed, img2img strength)
REQUESTS = [
    (CAPTIONS[0], 2, DiffusionSampling(steps=7), 3.0, None, 1, None),  # dpm++, the default
    (CAPTIONS[2], 1, DiffusionSampling(steps=4, sampler="ddpm"), 1.0, None, 5, None),  # noise every step, unguided
    (CAPTIONS[1], 2, DiffusionSampling(steps=6, sampler="ddim", eta=0.5), 2.0, CAPTIONS[0], 9, 0.5),  # img2img
]


def _inputs(model, vae, request):
    caption, images, sampling, guidance, negative, seed, strength = request
    text, unconditional = encode_image_prompts(TOKENIZER, model.config.text_len, [caption], images, guidance,
                                               None if negative is None else [negative])
    init = None
    if strength is not None:
        pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        init = init_latents(vae, pixels[None]).expand(images, -1, -1, -1)
    return dict(text=text, sampling=sampling, guidance_scale=guidance, unconditional=unconditional,
                generators=row_generators(images, seed, None, torch.device("cpu")), init=init,
                strength=1.0 if strength is None else strength)


def test_requests_joining_a_running_batch_get_what_they_get_alone() -> None:
    model, vae = _models(DiffusionConfig())
    alone = [sample_latents(model, **_inputs(model, vae, request)) for request in REQUESTS]
    batch = DiffusionBatch(model, capacity=8)
    first = batch.add(**_inputs(model, vae, REQUESTS[0]))
    batch.step()
    batch.step()  # the first request is at step 2 of 7 when the others arrive
    second, third = (batch.add(**_inputs(model, vae, request)) for request in REQUESTS[1:])
    finished_at: dict[int, int] = {}
    passes = 2
    while batch.groups:
        passes += 1
        for group in batch.step():
            finished_at[group.id] = passes
    # The ddpm request takes 4 passes from pass 3, the img2img one round(6 * 0.5) = 3, the first 7 in all.
    assert finished_at == {second.id: 6, third.id: 5, first.id: 7}
    for group, expected in zip((first, second, third), alone, strict=True):
        torch.testing.assert_close(group.sample, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first.sample[0], first.sample[1])  # two seeds, two images


def test_a_removed_request_leaves_and_the_others_go_on() -> None:
    model, vae = _models(DiffusionConfig(objective="flow"))
    request = (CAPTIONS[0], 1, DiffusionSampling(steps=5), 2.0, None, 3, None)
    alone = sample_latents(model, **_inputs(model, vae, request))
    batch = DiffusionBatch(model, capacity=4)
    kept = batch.add(**_inputs(model, vae, request))
    gone = batch.add(**_inputs(model, vae, (CAPTIONS[1], 2, DiffusionSampling(steps=5), 4.0, None, 0, None)))
    batch.step()
    batch.remove(gone)
    batch.remove(gone)  # a no-op
    assert batch.rows == 1
    while not kept.done:
        batch.step()
    assert gone.step == 1 and not batch.groups
    torch.testing.assert_close(kept.sample, alone, atol=1e-5, rtol=1e-5)
    assert batch.step() == []


def test_capacity_counts_images_and_a_large_request_runs_alone() -> None:
    model, vae = _models(DiffusionConfig())
    batch = DiffusionBatch(model, capacity=2)
    big = batch.add(**_inputs(model, vae, (CAPTIONS[0], 3, DiffusionSampling(steps=2), 1.0, None, 0, None)))
    assert batch.rows == 3 and not batch.fits(1)
    with pytest.raises(GenloomError, match="1 new images do not fit: 3 of the batch's 2 rows are taken"):
        batch.add(**_inputs(model, vae, (CAPTIONS[1], 1, DiffusionSampling(steps=2), 1.0, None, 0, None)))
    batch.step()
    assert batch.step() == [big] and batch.fits(2)
    with pytest.raises(GenloomError, match="does not fit a model trained with the ddpm objective"):
        batch.add(**_inputs(model, vae, (CAPTIONS[1], 1, DiffusionSampling(sampler="euler"), 1.0, None, 0, None)))
    with pytest.raises(GenloomError, match="batch capacity"):
        DiffusionBatch(model, capacity=0)
