"""Step-level batching of token-method image requests: a request that joins a running batch, with its own guidance,
temperature, negative prompt and seeds, draws the tokens it draws alone; rows leave when done or removed (the
last rows moving into their slots); capacity."""

from __future__ import annotations

import pytest
import torch
from test_imagine import parts  # noqa: F401 (the fixture)

from genloom.errors import GenloomError
from genloom.generate.image_token_batch import ImageTokenBatch
from genloom.generate.imagine import encode_image_prompts, row_generators, sample_image_tokens
from genloom.generate.sampling import SamplingConfig

# (caption, images, temperature, top_k, guidance, negative prompt, seed)
REQUESTS = [
    ("a red circle", 2, 1.0, 10, 3.0, None, 1),
    ("a cyan triangle", 1, 0.0, None, 1.0, None, 5),  # greedy and unguided: no unconditional rows
    ("a blue square above a green triangle", 2, 0.8, None, 2.0, "a red circle", 9),  # a negative prompt
]


def _inputs(model, tokenizer, request):
    caption, images, temperature, top_k, guidance, negative, seed = request
    text, unconditional = encode_image_prompts(tokenizer, model.config.text_len, [caption], images, guidance,
                                               None if negative is None else [negative])
    return dict(text=text, sampling=SamplingConfig(temperature=temperature, top_k=top_k), guidance_scale=guidance,
                unconditional=unconditional, generators=row_generators(images, seed, None, torch.device("cpu")))


def _alone(model, inputs):
    """The reference: the whole prefix recomputed at every token, no cache and no batch."""
    seeds = [int(g.initial_seed()) for g in inputs["generators"]]
    return sample_image_tokens(model, inputs["text"], inputs["sampling"], inputs["guidance_scale"],
                               inputs["unconditional"], use_cache=False, row_seeds=seeds)


def test_requests_joining_a_running_batch_draw_what_they_draw_alone(parts):  # noqa: F811
    model, tokenizer, _ = parts
    image_len = model.config.image_len
    alone = [_alone(model, _inputs(model, tokenizer, request)) for request in REQUESTS]
    batch = ImageTokenBatch(model, capacity=8)
    first = batch.add(**_inputs(model, tokenizer, REQUESTS[0]))
    batch.step()
    batch.step()  # the first request has 3 of its tokens when the second arrives
    second = batch.add(**_inputs(model, tokenizer, REQUESTS[1]))
    batch.step()
    third = batch.add(**_inputs(model, tokenizer, REQUESTS[2]))
    finished_at: dict[int, int] = {}
    steps = 3
    while batch.groups:
        steps += 1
        for group in batch.step():
            finished_at[group.id] = steps
    # Each group draws its first token when added, then one a step: image_len - 1 steps after its arrival.
    assert finished_at == {first.id: image_len - 1, second.id: 2 + image_len - 1, third.id: 3 + image_len - 1}
    for group, expected in zip((first, second, third), alone, strict=True):
        assert torch.equal(group.sample, expected), group.id
    assert not torch.equal(first.sample[0], first.sample[1])  # two seeds, two images
    assert batch.rows == 0 and not batch.owners


def test_a_removed_request_leaves_and_the_others_go_on(parts):  # noqa: F811
    model, tokenizer, _ = parts
    batch = ImageTokenBatch(model, capacity=8)
    groups = [batch.add(**_inputs(model, tokenizer, request)) for request in REQUESTS]
    batch.step()
    assert [g.slots for g in groups] == [[0, 1, 2, 3], [4], [5, 6, 7, 8]]
    batch.remove(groups[0])  # a client gone: the last rows move into its slots
    assert groups[0].slots == [] and batch.rows == 3
    assert sorted(groups[1].slots + groups[2].slots) == [0, 1, 2, 3, 4]
    assert all(batch.owners[s] == (g, i) for g in groups[1:] for i, s in enumerate(g.slots))
    late = batch.add(**_inputs(model, tokenizer, REQUESTS[0]))  # joins in the freed slots
    while batch.groups:
        batch.step()
    for group, request in zip((groups[1], groups[2], late), (REQUESTS[1], REQUESTS[2], REQUESTS[0]), strict=True):
        assert torch.equal(group.sample, _alone(model, _inputs(model, tokenizer, request)))
    batch.remove(groups[0])  # removing a group that has left is a no-op


def test_capacity_counts_images_and_a_larger_request_runs_alone(parts):  # noqa: F811
    model, tokenizer, _ = parts
    batch = ImageTokenBatch(model, capacity=2)
    inputs = _inputs(model, tokenizer, REQUESTS[0])  # 2 guided images: 4 cache rows
    batch.add(**inputs)
    assert not batch.fits(1)
    with pytest.raises(GenloomError, match="1 new images do not fit: 2 of the batch's 2 rows are taken"):
        batch.add(**_inputs(model, tokenizer, REQUESTS[1]))
    with pytest.raises(GenloomError, match="batch capacity"):
        ImageTokenBatch(model, capacity=0)
    alone = ImageTokenBatch(model, capacity=1)
    big = ("a yellow square", 3, 1.0, None, 2.0, None, 4)
    group = alone.add(**_inputs(model, tokenizer, big))  # nothing else runs: it takes a cache grown for it
    while not group.done:
        alone.step()
    assert torch.equal(group.sample, _alone(model, _inputs(model, tokenizer, big)))
