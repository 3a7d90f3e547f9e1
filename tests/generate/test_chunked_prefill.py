"""Chunked prefill (`DecodeBatch(prefill_chunk=...)`): prompts are read a bounded number of tokens per step, a long
one over several steps, while the rows already decoding keep producing a token at every step."""

from __future__ import annotations

import pytest
import torch

from genloom.errors import GenloomError
from genloom.generate import SamplingConfig, generate_tokens
from genloom.generate.batch import DecodeBatch


def _prompt(length: int, start: int = 1) -> list[int]:
    return [(start + i) % 39 + 1 for i in range(length)]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_rows_read_in_chunks_decode_as_they_would_alone(model, temperature):
    """Long and short prompts joining at different steps, read 5 tokens a step: each row's tokens are those of the
    same prompt generated alone, its prompt read in one forward."""
    joins = {0: _prompt(3), 1: _prompt(23, 5), 2: _prompt(12, 9), 4: _prompt(1, 2), 5: _prompt(6, 30)}
    cfgs = {s: SamplingConfig(max_new_tokens=8, temperature=temperature, top_k=20, seed=10 + s) for s in joins}
    batch = DecodeBatch(model, capacity=5, prefill_chunk=5)
    rows, out, step = {}, {}, 0
    while batch.busy or any(s >= step for s in joins):
        if step in joins:
            rows[batch.add([joins[step]], [cfgs[step]])[0].id] = step
        assert batch.prefill() <= 5
        for o in batch.step():
            out.setdefault(rows[o.row.id], []).append(o.token)
        step += 1
    for s, prompt in joins.items():
        assert out[s] == generate_tokens(model, [prompt], cfgs[s])[0]


def test_a_prompt_read_in_chunks_leaves_the_caches_a_whole_read_does(model):
    prompt = _prompt(30)
    whole, chunked = DecodeBatch(model, capacity=1), DecodeBatch(model, capacity=1, prefill_chunk=7)
    whole.add([prompt], [SamplingConfig(max_new_tokens=4)])
    chunked.add([prompt], [SamplingConfig(max_new_tokens=4)])
    while chunked.pending:
        chunked.prefill()
    for a, b in zip(whole.caches, chunked.caches, strict=True):
        torch.testing.assert_close(b.k[0, :, :29], a.k[0, :, :29], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.v[0, :, :29], a.v[0, :, :29], rtol=1e-5, atol=1e-5)


def test_a_long_prompt_is_read_a_chunk_a_step_while_the_running_rows_decode(model):
    cfg = SamplingConfig(max_new_tokens=20, temperature=0)
    batch = DecodeBatch(model, capacity=2, prefill_chunk=8)
    running = batch.add([_prompt(4)], [cfg])[0]
    assert batch.prefill() == 3 and batch.rows == [running]  # all but its last token
    long = batch.add([_prompt(30, 3)], [cfg])[0]
    assert batch.free == 0  # the long row holds its place while it waits
    read = []
    while batch.pending:
        read.append(batch.prefill())
        decoding = [running] if batch.pending else [running, long]  # the long row joins once its prompt is read
        assert [o.row for o in batch.step()] == decoding  # the running row: a token at every step
    assert read == [8, 8, 8, 5]  # 29 tokens: every one but the last, which its first step reads


def test_whole_prompts_share_a_forward_within_the_budget_and_the_oldest_goes_first(model):
    cfg = SamplingConfig(max_new_tokens=2)
    batch = DecodeBatch(model, capacity=6, prefill_chunk=5)
    short = batch.add([_prompt(3), _prompt(3, 7), _prompt(3, 9)], [cfg] * 3)
    assert batch.prefill() == 4 and batch.rows == short[:2]  # 2 x 2 fits 5 tokens; a third would be 6
    long = batch.add([_prompt(12)], [cfg])[0]
    later = batch.add([_prompt(2)], [cfg])[0]
    assert batch.prefill() == 2  # the last short one; the long one's chunk of 5 no longer fits this call
    assert batch.prefill() == 5 and batch.rows == short  # the long one's first chunk; the younger one waits
    assert batch.prefill() == 5  # ... and its second
    assert batch.prefill() == 2 and batch.rows == [*short, long, later]  # the long one's last 1, then the short one


def test_a_row_removed_before_its_prompt_is_read_frees_its_place(model):
    cfg = SamplingConfig(max_new_tokens=4)
    batch = DecodeBatch(model, capacity=2, prefill_chunk=4)
    first, second = batch.add([_prompt(20), _prompt(3)], [cfg, cfg])
    batch.prefill()  # a chunk of the first
    assert batch.free == 0
    batch.remove(first)  # its client is gone
    assert batch.free == 1 and [p.row for p in batch.pending] == [second] and first.slot == -1
    batch.prefill()
    assert batch.rows == [second] and not batch.pending
    batch.remove(first)  # a no-op now


def test_without_a_chunk_add_reads_the_prompts_and_prefill_does_nothing(model):
    batch = DecodeBatch(model, capacity=2)
    rows = batch.add([_prompt(30)], [SamplingConfig(max_new_tokens=2)])
    assert batch.rows == rows and batch.prefill() == 0


def test_the_chunk_must_be_at_least_one_token(model):
    with pytest.raises(GenloomError, match="at least 1 token"):
        DecodeBatch(model, capacity=2, prefill_chunk=0)
