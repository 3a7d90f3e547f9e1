"""Iteration-level batching: a row decodes the same tokens alone, joining a running batch, or beside rows that leave."""

from __future__ import annotations

import pytest
import torch

from genloom.errors import GenloomError
from genloom.generate import SamplingConfig, generate_tokens
from genloom.generate.batch import DecodeBatch, SlotKVCache, prepare_step, prompt_logprobs
from genloom.generate.sampling import apply_logit_bias, apply_output_penalties


def _run(batch: DecodeBatch, joins: dict[int, tuple[list[int], SamplingConfig]]) -> dict[int, list[int]]:
    """Step `batch` until it is empty, adding joins[step] before that step. Tokens by join step."""
    rows, out, step = {}, {}, 0
    while batch.rows or any(s >= step for s in joins):
        if step in joins:
            prompt, cfg = joins[step]
            rows[batch.add([prompt], [cfg])[0].id] = step
        for o in batch.step():
            out.setdefault(rows[o.row.id], []).append(o.token)
        step += 1
    return out


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_row_joining_mid_decoding_decodes_as_it_would_alone(model, temperature):
    prompts = {0: [1, 2, 3], 2: [4, 5, 6, 7, 8, 9, 10], 3: [11], 7: [12, 13, 14, 15]}
    cfgs = {s: SamplingConfig(max_new_tokens=6 + s, temperature=temperature, top_k=20, seed=100 + s) for s in prompts}
    together = _run(DecodeBatch(model, capacity=4), {s: (prompts[s], cfgs[s]) for s in prompts})
    for s, prompt in prompts.items():
        assert together[s] == generate_tokens(model, [prompt], cfgs[s])[0]  # the fixed-batch path, alone


def test_a_row_that_leaves_frees_its_slot_and_the_others_carry_on(model):
    cfg = SamplingConfig(max_new_tokens=10, temperature=0)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9], [10, 11]]
    batch = DecodeBatch(model, capacity=4)
    rows = batch.add(prompts, [cfg] * 4)
    batch.step()
    batch.step()
    batch.remove(rows[0])  # a client gone: the last row moves into its slot
    assert batch.free == 1 and rows[3].slot == 0 and rows[0].slot == -1
    late = batch.add([[20, 21, 22]], [cfg])[0]
    while batch.rows:
        batch.step()
    for row, prompt in zip(rows[1:], prompts[1:], strict=True):
        assert row.generated == generate_tokens(model, [prompt], cfg)[0]
    assert late.generated == generate_tokens(model, [[20, 21, 22]], cfg)[0]
    assert rows[0].generated == generate_tokens(model, [prompts[0]], cfg)[0][:2]


def test_rows_end_at_their_end_token_or_length_and_leave_at_once(model):
    greedy = generate_tokens(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=10, temperature=0))[0]
    eos = greedy[2]
    batch = DecodeBatch(model, capacity=2, eos_id=eos)
    short, long = batch.add([[1, 2, 3], [5, 6]], [SamplingConfig(max_new_tokens=10, temperature=0),
                                                   SamplingConfig(max_new_tokens=5, temperature=0, stop_at_eos=False)])
    live_after_each_step = []
    while batch.rows:
        batch.step()
        live_after_each_step.append([r.id for r in batch.rows])
    ends = greedy.index(eos) + 1
    assert short.generated == greedy[:ends] and short.finish_reason == "stop"
    assert long.generated == generate_tokens(model, [[5, 6]], long.sampling)[0] and long.finish_reason == "length"
    assert all(short.id not in live for live in live_after_each_step[ends - 1 :])  # gone with its last token
    assert len(live_after_each_step) == 5


def test_capacity_and_context_limits(model):
    batch = DecodeBatch(model, capacity=1)
    batch.add([[1]], [SamplingConfig(max_new_tokens=3)])
    with pytest.raises(GenloomError, match="do not fit: 0 of 1 slots are free"):
        batch.add([[2]], [SamplingConfig()])
    context = model.config.context_length
    full = DecodeBatch(model, capacity=2).add([[1] * context, [1] * (context - 8)],
                                              [SamplingConfig(max_new_tokens=100)] * 2)
    assert full[0].finish_reason == "length" and full[0].slot == -1  # no room: never decodes
    assert full[1].max_new == 8 and full[1].context_limited


def test_logprobs_are_the_models_log_softmax(model):
    prompt = [3, 1, 4, 1, 5]
    batch = DecodeBatch(model, capacity=2)
    neighbour = [7, 7, 7, 7, 7, 7, 7]  # another length beside the row under test
    batch.add([neighbour], [SamplingConfig(max_new_tokens=4, temperature=0)])
    row = batch.add([prompt], [SamplingConfig(max_new_tokens=4, temperature=0.7, seed=1)], top_logprobs=[3])[0]
    logged = []
    while row.slot >= 0:
        logged += [o.logprobs for o in batch.step() if o.row is row]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt + row.generated]))[0], dim=-1)
    for i, (token, lp) in enumerate(zip(row.generated, logged, strict=True)):
        expected = logp[len(prompt) - 1 + i]
        assert lp is not None and lp.logprob == pytest.approx(float(expected[token]), abs=1e-4)
        assert [t for t, _ in lp.top] == expected.topk(3).indices.tolist()
    scored = prompt_logprobs(model, prompt + row.generated, top=2)
    assert scored[0] is None
    assert [s.logprob for s in scored[1:] if s is not None] == pytest.approx(
        [float(logp[i - 1, t]) for i, t in enumerate(prompt + row.generated) if i > 0], abs=1e-5)


def test_presence_and_frequency_penalties_follow_openai():
    logits = torch.tensor([[1.0, 1.0, 1.0]])
    counts = torch.tensor([[0.0, 1.0, 3.0]])
    assert apply_output_penalties(logits, counts, 0.5, 0.25).tolist() == [[1.0, 0.25, -0.25]]
    with pytest.raises(GenloomError, match=r"presence_penalty \(3.0\) must be in \[-2, 2\]"):
        SamplingConfig(presence_penalty=3.0)


def test_logit_bias_adds_to_the_logits_of_its_tokens_in_every_row():
    logits = torch.zeros(2, 4)
    assert apply_logit_bias(logits, {1: 2.5, 3: -100.0}).tolist() == [[0.0, 2.5, 0.0, -100.0]] * 2
    assert apply_logit_bias(logits, {}) is logits
    with pytest.raises(GenloomError, match=r"logit_bias \{2: 101.0\}"):
        SamplingConfig(logit_bias={2: 101.0})


def test_a_biased_row_decodes_as_alone_beside_plain_rows(model):
    """Bias bans a token for its own row only; the plain rows beside it sample as one group, unbiased."""
    plain = SamplingConfig(max_new_tokens=12, temperature=0)
    free = generate_tokens(model, [[1, 2]], plain)[0]
    banned = SamplingConfig(max_new_tokens=12, temperature=0, logit_bias={t: -100.0 for t in set(free[:3])})
    biased_alone = generate_tokens(model, [[1, 2]], banned)[0]
    assert not set(free[:3]) & set(biased_alone)
    batch = DecodeBatch(model, capacity=3)
    rows = batch.add([[1, 2], [1, 2], [5]], [plain, banned, plain])
    while batch.rows:
        batch.step()
    assert rows[0].generated == free and rows[1].generated == biased_alone
    assert rows[2].generated == generate_tokens(model, [[5]], plain)[0]


def test_frequency_penalty_makes_output_more_varied(model):
    plain = generate_tokens(model, [[1, 2]], SamplingConfig(max_new_tokens=30, temperature=0))[0]
    penalised = SamplingConfig(max_new_tokens=30, temperature=0, frequency_penalty=2.0)
    varied = generate_tokens(model, [[1, 2]], penalised)[0]
    assert len(set(varied)) > len(set(plain))


def test_forced_tokens_go_through_the_model_as_if_it_had_written_them(model):
    cfg = SamplingConfig(max_new_tokens=8, temperature=0)
    batch = DecodeBatch(model, capacity=2)
    row, _ = batch.add([[1, 2, 3], [7, 8]], [cfg, cfg])
    first = [o.token for o in batch.step()]
    batch.force(row, [30, 31])
    steps = [[o.token for o in batch.step()] for _ in range(3)]
    assert [s[0] for s in steps[:2]] == [30, 31]
    # After the forced tokens the row continues exactly as a prompt that held them would.
    assert steps[2][0] == generate_tokens(model, [[1, 2, 3, first[0], 30, 31]], cfg)[0][0]
    assert [first[1], *(s[1] for s in steps)] == generate_tokens(model, [[7, 8]], cfg)[0][:4]  # its neighbour unmoved


@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.float16])
def test_a_16_bit_cache_keeps_rows_independent_and_close_to_the_models_own_numbers(model, kv_dtype):
    batch = DecodeBatch(model, capacity=3, kv_dtype=kv_dtype)
    assert all(cache.k.dtype == kv_dtype and cache.v.dtype == kv_dtype for cache in batch.caches)
    prompts = {0: [1, 2, 3], 2: [4, 5, 6, 7, 8, 9, 10], 3: [11]}
    cfgs = {s: SamplingConfig(max_new_tokens=8, temperature=1.0, seed=7 + s) for s in prompts}
    together = _run(batch, {s: (prompts[s], cfgs[s]) for s in prompts})
    for s, prompt in prompts.items():  # alone in a batch with the same cache: the same tokens
        assert together[s] == _run(DecodeBatch(model, capacity=1, kv_dtype=kv_dtype), {0: (prompt, cfgs[s])})[0]
    # Log-probabilities of the row's tokens stay within 16-bit rounding of the fp32 model's.
    prompt = [3, 1, 4, 1, 5]
    row = DecodeBatch(model, capacity=1, kv_dtype=kv_dtype)
    added = row.add([prompt], [SamplingConfig(max_new_tokens=10, temperature=0)], top_logprobs=[0])[0]
    logged = []
    while added.slot >= 0:
        logged += [o.logprobs.logprob for o in row.step() if o.logprobs is not None]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt + added.generated]))[0], dim=-1)
    expected = [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(added.generated)]
    assert logged == pytest.approx(expected, abs=0.05)
    assert logged != pytest.approx(expected, abs=1e-6)  # the cache did hold 16-bit numbers


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16])
def test_a_step_writes_each_rows_key_at_its_own_column_in_every_layer(kv_dtype):
    """`prepare_step` works out where keys go once for all layers; each layer then writes row i's key and value at
    column fill[i] of slot i, as indexing k[i, :, fill[i]] would, and touches nothing else."""
    torch.manual_seed(0)
    layers = [SlotKVCache(5, 3, 12, 4, torch.device("cpu"), kv_dtype) for _ in range(2)]
    for cache in layers:
        cache.k.normal_()
        cache.v.normal_()
    before = [(cache.k.clone(), cache.v.clone()) for cache in layers]
    fill = torch.tensor([7, 0, 11])  # three live rows of five slots, each at its own column
    prepare_step(layers, fill, width=12)
    for cache, (k0, v0) in zip(layers, before, strict=True):
        k, v = torch.randn(3, 3, 1, 4), torch.randn(3, 3, 1, 4)
        keys, values = cache.append(k, v)
        expected_k, expected_v = k0.clone(), v0.clone()
        expected_k[torch.arange(3), :, fill] = k[:, :, 0].to(kv_dtype)
        expected_v[torch.arange(3), :, fill] = v[:, :, 0].to(kv_dtype)
        assert torch.equal(cache.k, expected_k) and torch.equal(cache.v, expected_v)
        assert keys.shape == values.shape == (3, 3, 12, 4)


def test_rows_at_one_column_write_a_slice():
    layers = [SlotKVCache(4, 2, 6, 3, torch.device("cpu"), torch.float32)]
    prepare_step(layers, torch.tensor([2, 2]), width=3, aligned=True)
    k = torch.randn(2, 2, 1, 3)
    layers[0].append(k, k)
    assert layers[0].column == 2
    assert torch.equal(layers[0].k[:2, :, 2], k[:, :, 0]) and layers[0].k[2:].abs().sum() == 0
