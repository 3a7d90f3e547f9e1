"""TranslationBatch: requests that join at different steps, with different beam sizes, each translate exactly as the
fixed-batch reference does alone; sources that end free their rows; removal; growth past the capacity; errors."""

from __future__ import annotations

import pytest
from translation_helpers import SOURCES

from genloom.data.translation import encode_source
from genloom.errors import GenloomError
from genloom.generate.translate import translate_fixed_batch
from genloom.generate.translate_batch import TransformerRows, TranslationBatch
from genloom.tokenizers import SpecialIds


def encoded(tok, texts: list[str]) -> list[list[int]]:
    ids = SpecialIds.of(tok)
    return [encode_source(tok, ids, text) for text in texts]


def reference(model, tok, source: list[int], beam_size: int, max_len_a: float = 1.2, max_len_b: int = 10
              ) -> list[int]:
    """One source alone, through the fixed-batch searches and the model's cached incremental decoder."""
    return translate_fixed_batch(model, [source], SpecialIds.of(tok), beam_size, 0.6, max_len_a, max_len_b)[0]


def test_requests_joining_at_different_steps_translate_as_alone(translator):
    model, tok, _ = translator
    batch = TranslationBatch(model, capacity=16, ids=SpecialIds.of(tok))
    requests = [(encoded(tok, SOURCES[:3]), 4), (encoded(tok, SOURCES[3:5]), 1), (encoded(tok, SOURCES[-4:]), 3)]
    groups = [batch.add(*requests[0])]
    finished = {}
    for step in range(100):
        if step == 2:
            groups.append(batch.add(*requests[1]))  # joins while the first is two tokens in
        if step == 4:
            groups.append(batch.add(*requests[2]))
        for group in batch.step():
            finished[groups.index(group)] = step
        # Rows are the live hypotheses: a source that ends frees its rows before the rest of its request.
        assert batch.decoder.rows == sum(g.rows for g in batch.groups)
        if not batch.groups and step >= 4:
            break
    assert sorted(finished) == [0, 1, 2]
    for group, (sources, beam) in zip(groups, requests, strict=True):
        assert group.sample == [reference(model, tok, s, beam) for s in sources]
    assert batch.rows == 0 and batch.decoder.rows == 0


def test_a_source_that_ends_frees_its_rows_before_its_request_ends(translator):
    model, tok, _ = translator
    # Target limits of |source| - 1 tokens: the one-token source ends at its first token, the long one goes on.
    short, long = encoded(tok, ["9", "7 7 7 7 7 7 7 7"])
    batch = TranslationBatch(model, capacity=4, ids=SpecialIds.of(tok), max_len_a=1.0, max_len_b=0)
    group = batch.add([short, long], beam_size=1)
    widths, running = [], []
    while not group.done:
        batch.step()
        widths.append(batch.decoder.rows)
        running.append(batch.rows)
    assert widths[0] == 1 and widths[-1] == 0  # the short one left after one step, the long one later
    assert running[0] == 1  # and its place in the batch is free for the scheduler at once
    assert group.sample == [reference(model, tok, s, 1, 1.0, 0) for s in (short, long)]
    assert len(group.sample[0]) == 1 and len(group.sample[1]) > 1


def test_removed_request_leaves_at_once_and_the_others_are_unchanged(translator):
    model, tok, _ = translator
    batch = TranslationBatch(model, capacity=16, ids=SpecialIds.of(tok))
    kept = batch.add(encoded(tok, SOURCES[:2]), 4)
    gone = batch.add(encoded(tok, SOURCES[2:4]), 4)
    batch.step()
    batch.step()
    batch.remove(gone)
    batch.remove(gone)  # a no-op
    assert batch.groups == [kept] and batch.decoder.rows == kept.rows
    while not kept.done:
        batch.step()
    assert kept.sample == [reference(model, tok, s, 4) for s in encoded(tok, SOURCES[:2])]


def test_a_request_larger_than_the_capacity_runs(translator):
    model, tok, _ = translator
    batch = TranslationBatch(model, capacity=1, ids=SpecialIds.of(tok))
    sources = encoded(tok, SOURCES[:6])
    group = batch.add(sources, 4)  # 24 hypotheses: the storage grows
    while not group.done:
        batch.step()
    if isinstance(batch.decoder, TransformerRows):  # its memory is as wide as its longest source, not max_len
        assert batch.decoder.src_valid.shape[1] == max(map(len, sources)) < model.config.max_len
    assert group.sample == [reference(model, tok, s, 4) for s in sources]


def test_bad_requests_are_refused_before_they_join(translator):
    model, tok, _ = translator
    batch = TranslationBatch(model, capacity=4, ids=SpecialIds.of(tok))
    with pytest.raises(GenloomError, match="beam size"):
        batch.add(encoded(tok, ["1"]), 0)
    with pytest.raises(GenloomError, match="at least one source"):
        batch.add([], 4)
    if hasattr(model.config, "max_len"):
        with pytest.raises(GenloomError, match="exceeds the model's max_len"):
            batch.add(encoded(tok, ["1 " * 30]), 4)
    assert batch.groups == [] and batch.decoder.rows == 0
    with pytest.raises(GenloomError, match="capacity"):
        TranslationBatch(model, capacity=0, ids=SpecialIds.of(tok))


def test_a_failed_step_ends_every_request_and_the_batch_goes_on(translator, monkeypatch):
    model, tok, _ = translator
    batch = TranslationBatch(model, capacity=8, ids=SpecialIds.of(tok))
    first = batch.add(encoded(tok, SOURCES[:2]), 4)
    batch.step()
    step = batch.decoder.step
    monkeypatch.setattr(batch.decoder, "step", lambda tokens: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(RuntimeError, match="out of memory"):
        batch.step()
    assert batch.groups == [] and batch.rows == 0 and batch.decoder.rows == 0
    batch.remove(first)  # what the scheduler does with the requests it fails: a no-op now
    monkeypatch.setattr(batch.decoder, "step", step)
    again = batch.add(encoded(tok, SOURCES[2:4]), 2)
    while not again.done:
        batch.step()
    assert again.sample == [reference(model, tok, s, 2) for s in encoded(tok, SOURCES[2:4])]
