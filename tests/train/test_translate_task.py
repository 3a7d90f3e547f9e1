"""Translation training: tokenizer specials, label smoothing, token-budget batches, and real training runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genloom.data.builtin_parallel import builtin_pairs
from genloom.data.parallel import add_task_prefix, task_tag
from genloom.data.translation import train_translation_tokenizer
from genloom.errors import GenloomError
from genloom.generate.translate import translate
from genloom.models.seq2seq import Seq2SeqConfig
from genloom.tokenizers import BPETokenizer, SpecialIds
from genloom.train.config import TrainConfig
from genloom.train.translate import TranslationTask, encode_pairs, label_smoothed_cross_entropy, train_translation

TRAIN = builtin_pairs("numbers", "digits", "en", "train", max_digits=2)
VAL = builtin_pairs("numbers", "digits", "en", "val", max_digits=2)


def test_bpe_special_tokens_are_single_ids_and_lm_use_is_unchanged():
    pairs = add_task_prefix(TRAIN, task_tag("digits", "en"))
    tok = train_translation_tokenizer(pairs, 300)
    assert tok.token_id("<|endoftext|>") == 0 == tok.eos_id  # LM end-of-text stays first
    ids = SpecialIds.of(tok)
    assert (ids.pad, ids.bos, ids.eos) == (1, 2, 3)
    tag = tok.token_id("<digits-en>")  # found in the sources
    assert tok.encode("<digits-en> 42</s>") == [tag, *tok.encode(" 42"), ids.eos]
    assert tok.decode(tok.encode("<digits-en> 42")) == "<digits-en> 42"
    with pytest.raises(GenloomError, match="no token"):
        tok.token_id("<fr-en>")
    with pytest.raises(GenloomError, match="at least 260"):
        BPETokenizer.train(["abc"], 259, special_tokens=["<pad>", "<s>", "</s>"])


def test_label_smoothing_matches_torch_cross_entropy():
    torch.manual_seed(0)
    logits, targets = torch.randn(40, 11), torch.randint(0, 11, (40,))
    targets[::3] = 1  # padding
    for eps in (0.0, 0.1):
        expected = F.cross_entropy(logits, targets, label_smoothing=eps, ignore_index=1)
        torch.testing.assert_close(label_smoothed_cross_entropy(logits, targets, eps, ignore_index=1), expected)


def _task(max_tokens: int = 64) -> TranslationTask:
    tok = train_translation_tokenizer(TRAIN, 300)
    ids = SpecialIds.of(tok)
    config = Seq2SeqConfig(vocab_size=tok.vocab_size, max_len=32, n_encoder_layers=1, n_decoder_layers=1,
                           d_model=16, n_heads=2, d_ff=32, pad_id=ids.pad)
    return TranslationTask("seq2seq", config, tok, encode_pairs(tok, TRAIN), encode_pairs(tok, VAL), max_tokens)


def test_batches_respect_budget_and_bos_eos_pad_layout():
    task = _task(max_tokens=64)
    ids = task.ids
    assert sorted(i for b in task.train_batches for i in b) == list(range(len(TRAIN)))  # one epoch
    batches = task.micro_batches(torch.Generator().manual_seed(0), 0, 1, 8)
    for src, tgt_in, tgt_out in batches:
        assert src.numel() <= 64 and tgt_in.numel() <= 64
        assert tgt_in.shape == tgt_out.shape
        assert (tgt_in[:, 0] == ids.bos).all()
        for s, ti, to in zip(src, tgt_in, tgt_out, strict=True):
            n_src = int((s != ids.pad).sum())
            assert s[n_src - 1] == ids.eos and (s[n_src:] == ids.pad).all()
            n = int((to != ids.pad).sum())
            assert to[n - 1] == ids.eos and (to[n:] == ids.pad).all() and (ti[n:] == ids.pad).all()
            assert torch.equal(ti[1:n], to[: n - 1])  # decoder input is the output shifted right
            target = task.tokenizer.decode(to[: n - 1].tolist())
            assert (task.tokenizer.decode(s[: n_src - 1].tolist()), target) in TRAIN


def test_batches_follow_the_generator_and_split_across_processes():
    task = _task()
    state = torch.Generator().manual_seed(5).get_state()

    def draw(rank: int, world: int, n: int) -> list:
        g = torch.Generator()
        g.set_state(state)
        return task.micro_batches(g, rank, world, n)

    single = draw(0, 1, 2)
    for a, b in zip(single, draw(0, 1, 2), strict=True):  # the generator state is the whole data position
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    shards = draw(0, 2, 1) + draw(1, 2, 1)
    for a, b in zip(single, shards, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    val = task.val_batches(4, 0, 1)
    split = task.val_batches(4, 0, 2) + task.val_batches(4, 1, 2)
    assert sorted(b[0].sum().item() for b in val) == sorted(b[0].sum().item() for b in split)


def _train(tmp_path, family: str, steps: int, lr: float, overrides: dict):
    cfg = TrainConfig(out_dir=str(tmp_path / family), max_steps=steps, lr=lr, min_lr=0.0, warmup_steps=30,
                      schedule="inverse_sqrt" if family == "seq2seq" else "cosine", weight_decay=0.0,
                      eval_interval=steps, eval_batches=2, log_interval=50, device="cpu", progress=False)
    preset = "transformer-tiny" if family == "seq2seq" else "lstm-small"
    return train_translation(TRAIN, VAL, family, preset, cfg, vocab_size=300, max_tokens=256,
                             model_overrides=overrides)


def _exact_match(model, tok, beam_size: int) -> float:
    out = translate(model, tok, [s for s, _ in TRAIN], beam_size=beam_size)
    return sum(o == t for o, (_, t) in zip(out, TRAIN, strict=True)) / len(TRAIN)


def test_tiny_transformer_learns_numbers_through_the_trainer(tmp_path):
    model, tok, result = _train(tmp_path, "seq2seq", 300, 3e-3, dict(
        d_model=64, n_heads=4, d_ff=128, dropout=0.0, n_encoder_layers=2, n_decoder_layers=2, max_len=32))
    assert result.train_losses[-1] < result.train_losses[0] / 4
    assert _exact_match(model, tok, beam_size=1) >= 0.95
    assert _exact_match(model, tok, beam_size=4) >= 0.95


def test_tiny_lstm_learns_numbers_through_the_trainer(tmp_path):
    model, tok, result = _train(tmp_path, "lstm", 400, 1e-2, dict(
        embed_dim=64, hidden_size=64, n_encoder_layers=1, n_decoder_layers=1, dropout=0.0))
    assert result.train_losses[-1] < result.train_losses[0] / 4
    assert _exact_match(model, tok, beam_size=1) >= 0.9
    assert _exact_match(model, tok, beam_size=4) >= 0.9


def test_resume_continues_the_same_run(tmp_path):
    overrides = dict(d_model=16, n_heads=2, d_ff=32, dropout=0.1, n_encoder_layers=1, n_decoder_layers=1, max_len=32)

    def cfg(out: str, steps: int) -> TrainConfig:
        return TrainConfig(out_dir=str(tmp_path / out), max_steps=steps, lr=1e-3, min_lr=0.0, warmup_steps=2,
                           schedule="constant", eval_interval=5, eval_batches=1, log_interval=1, device="cpu",
                           progress=False)

    _, _, full = train_translation(TRAIN, VAL, "seq2seq", "transformer-tiny", cfg("full", 10), vocab_size=300,
                                   max_tokens=128, model_overrides=overrides)
    train_translation(TRAIN, VAL, "seq2seq", "transformer-tiny", cfg("cut", 5), vocab_size=300, max_tokens=128,
                      model_overrides=overrides)
    _, _, resumed = train_translation(TRAIN, VAL, "seq2seq", "transformer-tiny", cfg("cut", 10), vocab_size=300,
                                      max_tokens=128, model_overrides=overrides, resume=True)
    assert resumed.train_losses == full.train_losses[5:]


def test_validation_metrics_are_bleu_and_chrf_of_the_first_pairs_that_fit():
    tok = train_translation_tokenizer(TRAIN, 300)
    config = Seq2SeqConfig(vocab_size=tok.vocab_size, pad_id=SpecialIds.of(tok).pad, d_model=16, n_heads=2,
                           d_ff=32, n_encoder_layers=1, n_decoder_layers=1, max_len=12)
    long_pair = ("1 " * 20, "one " * 20)  # longer than max_len: dropped from validation and from BLEU alike
    val = [long_pair, *VAL[:9]]
    task = TranslationTask("seq2seq", config, tok, encode_pairs(tok, TRAIN), encode_pairs(tok, val), 256,
                           val_texts=val, bleu_sentences=5)
    assert task.bleu_pairs == VAL[:5]
    from genloom.models.seq2seq import Seq2SeqTransformer

    model = Seq2SeqTransformer(config).eval()
    metrics = task.validation_metrics(model)
    assert set(metrics) == {"bleu", "chrf"} and all(0.0 <= v <= 100.0 for v in metrics.values())
    with pytest.raises(GenloomError, match="validation texts"):
        TranslationTask("seq2seq", config, tok, encode_pairs(tok, TRAIN), encode_pairs(tok, val), 256,
                        val_texts=val[:3], bleu_sentences=5)
