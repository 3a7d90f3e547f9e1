"""Translation decoding: greedy vs beam 1, KV cache vs recompute, batching, checkpoint round trip, errors."""

from __future__ import annotations

import pytest
import torch
from translation_helpers import SOURCES, TRAIN

from genloom.data.translation import encode_source
from genloom.errors import GenloomError
from genloom.generate.beam import beam_search, greedy_search
from genloom.generate.translate import make_decoder, translate
from genloom.registry import load_pretrained
from genloom.tokenizers import SpecialIds


def _decode_batch(model, tok, sources: list[str], beam: bool) -> list[list[int]]:
    ids = SpecialIds.of(tok)
    encoded = [encode_source(tok, ids, s) for s in sources]
    src = torch.full((len(encoded), max(map(len, encoded))), ids.pad)
    for i, e in enumerate(encoded):
        src[i, : len(e)] = torch.tensor(e)
    valid = model.source_key_valid(src)
    max_lengths = [len(e) + 3 for e in encoded]
    with torch.no_grad():
        decoder = make_decoder(model, model.encode(src, valid), valid, max(max_lengths))
        if beam:
            return [h.tokens for h in beam_search(decoder, len(src), 1, ids.bos, ids.eos, max_lengths, alpha=0.0)]
        return greedy_search(decoder, len(src), ids.bos, ids.eos, max_lengths)


def test_beam_one_equals_greedy(translator):
    # Beam search keeps hypotheses that ended early: with beam 1 it returns a shorter one ending in EOS if that
    # scores higher than greedy's final output, so the two agree where the model is confident (training pairs).
    model, tok, _ = translator
    sources = [s for s, _ in TRAIN[::5]]
    greedy = _decode_batch(model, tok, sources, beam=False)
    assert _decode_batch(model, tok, sources, beam=True) == greedy
    assert len({tuple(g) for g in greedy}) >= 5  # not one constant output


def test_batched_equals_one_by_one(translator):
    model, tok, _ = translator
    for beam in (1, 4):
        batched = translate(model, tok, SOURCES, beam_size=beam, batch_size=8)
        assert batched == [translate(model, tok, [s], beam_size=beam, batch_size=1)[0] for s in SOURCES]


def test_cached_equals_recompute(translator):
    model, tok, _ = translator
    if not hasattr(model.config, "max_len"):
        with pytest.raises(GenloomError, match="only to the Transformer"):
            translate(model, tok, SOURCES[:1], recompute=True)
        return
    for beam in (1, 4):
        cached = translate(model, tok, SOURCES, beam_size=beam)
        assert translate(model, tok, SOURCES, beam_size=beam, recompute=True) == cached


def test_checkpoint_round_trip_translates_identically(translator):
    model, tok, run_dir = translator
    loaded = load_pretrained(run_dir)
    assert loaded.family in ("seq2seq", "lstm") and not loaded.model.training
    expected = translate(model, tok, SOURCES, beam_size=4)
    assert translate(loaded.model, loaded.tokenizer, SOURCES, beam_size=4) == expected


def test_translate_keeps_training_mode_and_rejects_bad_input(translator):
    model, tok, _ = translator
    model.train()
    translate(model, tok, SOURCES[:2], beam_size=2)
    assert model.training
    model.eval()
    with pytest.raises(GenloomError, match="beam size"):
        translate(model, tok, SOURCES[:1], beam_size=0)
    if hasattr(model.config, "max_len"):
        with pytest.raises(GenloomError, match="exceeds the model's max_len 24"):
            translate(model, tok, ["1 " * 30])


def test_stream_keeps_input_order_and_blank_lines(translator):
    from genloom.generate.translate import translate_stream

    model, tok, _ = translator
    sources = ["12", "", "7", "95", "  ", "3"]
    expected = translate(model, tok, [s for s in sources if s.strip()], beam_size=2)
    streamed = list(translate_stream(model, tok, iter(sources), window=2, beam_size=2))
    assert [s for s in streamed if s] == expected
    assert streamed[1] == streamed[4] == ""


def test_direction_prefix_of_one_and_multi_task_tokenizers():
    from genloom.data.parallel import add_task_prefix, task_tag
    from genloom.data.translation import direction_prefix, model_task_tags, train_translation_tokenizer

    plain = train_translation_tokenizer(TRAIN, 300)
    assert model_task_tags(plain) == [] and direction_prefix(plain, "xx", "yy") == ""
    multi = train_translation_tokenizer(
        add_task_prefix(TRAIN, task_tag("digits", "en")) + add_task_prefix(TRAIN, task_tag("en", "digits")), 300
    )
    assert model_task_tags(multi) == ["<digits-en>", "<en-digits>"]
    assert direction_prefix(multi, "en", "digits") == "<en-digits> "
    with pytest.raises(GenloomError, match=r"unknown language pair de-en.*serves digits-en, en-digits"):
        direction_prefix(multi, "de", "en")
    with pytest.raises(GenloomError, match="pass --src-lang"):
        direction_prefix(multi, None, None)
