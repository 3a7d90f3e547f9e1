"""Generation: batching equals one-by-one, sampling controls, stop strings, streaming, limits."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from genloom.errors import GenloomError
from genloom.generate import SamplingConfig, TokenStream, generate, generate_tokens
from genloom.generate.lm import TextStream
from genloom.generate.sampling import apply_repetition_penalty, filter_logits
from genloom.models.gpt import GPT, GPTConfig
from genloom.tokenizers import BPETokenizer, CharTokenizer


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=40, context_length=48, n_layers=2, d_model=32, n_heads=4))
    with torch.no_grad():  # larger weights than the 0.02 init, so logits are far from ties
        for p in gpt.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return gpt.eval()


PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15]]


def test_batch_of_ragged_prompts_greedy_equals_each_alone(model):
    cfg = SamplingConfig(max_new_tokens=12, temperature=0)
    batched = generate_tokens(model, PROMPTS, cfg)
    assert batched == [generate_tokens(model, [p], cfg)[0] for p in PROMPTS]
    assert all(len(out) == 12 for out in batched)


def test_seeded_sampling_is_per_row(model):
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.95, seed=7)
    batched = generate_tokens(model, PROMPTS, cfg)
    # Row i samples with seed + i: prompt i alone with seed 7 + i reproduces it.
    for i, prompt in enumerate(PROMPTS):
        alone = generate_tokens(model, [prompt], SamplingConfig(max_new_tokens=10, top_k=20, top_p=0.95, seed=7 + i))
        assert alone[0] == batched[i]
    assert generate_tokens(model, PROMPTS, cfg) == batched  # reproducible


def test_greedy_equals_argmax_of_full_forward(model):
    out = generate_tokens(model, [[3, 1, 4]], SamplingConfig(max_new_tokens=6, temperature=0))[0]
    seq = [3, 1, 4]
    with torch.no_grad():
        for _ in range(6):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert out == seq[3:]


def test_top_k_one_and_tiny_top_p_are_greedy(model):
    greedy = generate_tokens(model, PROMPTS, SamplingConfig(max_new_tokens=8, temperature=0))
    assert generate_tokens(model, PROMPTS, SamplingConfig(max_new_tokens=8, top_k=1, seed=3)) == greedy
    assert generate_tokens(model, PROMPTS, SamplingConfig(max_new_tokens=8, top_p=1e-6, seed=3)) == greedy


def test_filter_logits_keeps_the_right_sets():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, top_k=2, top_p=None))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(filter_logits(logits, top_k=None, top_p=0.8))  # 0.5 + 0.3 reaches 0.8
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(filter_logits(logits, top_k=None, top_p=0.81))
    assert kept.tolist() == [[True, True, True, False]]


def test_repetition_penalty_follows_ctrl():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0]]


def test_repetition_penalty_changes_output(model):
    plain = generate_tokens(model, [[1, 2]], SamplingConfig(max_new_tokens=30, temperature=0))[0]
    penalised = generate_tokens(model, [[1, 2]], SamplingConfig(max_new_tokens=30, temperature=0,
                                                                repetition_penalty=5.0))[0]
    assert len(set(penalised)) > len(set(plain))


def test_prompt_longer_than_context_is_a_user_error(model):
    with pytest.raises(GenloomError, match="longer than the model's context of 48"):
        generate_tokens(model, [[1] * 49], SamplingConfig(max_new_tokens=1))


def test_generation_stops_at_the_context(model):
    out = generate_tokens(model, [[1] * 40], SamplingConfig(max_new_tokens=100, temperature=0))
    assert len(out[0]) == 8


def test_eos_ends_a_row(model):
    greedy = generate_tokens(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=10, temperature=0))[0]
    eos = greedy[4]
    out = generate_tokens(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=10, temperature=0), eos_id=eos)[0]
    assert out == greedy[: greedy.index(eos) + 1]


def test_stop_strings_and_streaming(model):
    tokenizer = CharTokenizer([chr(ord("a") + i) for i in range(26)] + list(" .,;:!?-'\"()0123456789")[:14])
    assert tokenizer.vocab_size == 40
    free = generate(model, tokenizer, ["abc"], SamplingConfig(max_new_tokens=20, temperature=0))[0].text
    stop = free[5:7]
    pieces: list[str] = []
    result = generate(model, tokenizer, ["abc"], SamplingConfig(max_new_tokens=20, temperature=0, stop=[stop]),
                      on_text=lambda row, piece: pieces.append(piece))[0]
    assert result.text == free[: free.index(stop)]
    assert result.finish_reason == "stop"
    assert "".join(pieces) == result.text  # the stop string never reaches the stream, even partly


def test_text_stream_holds_back_incomplete_utf8():
    tokenizer = BPETokenizer.train(["plain ascii text only"], vocab_size=260)
    ids = tokenizer.encode("é✓")  # multi-byte characters become several byte tokens
    stream = TextStream(tokenizer, stop=[])
    emitted = [stream.push(i) for i in ids]
    assert "\ufffd" not in "".join(emitted)
    assert "".join(emitted) + stream.flush() == "é✓"


def _stream_text(tokenizer, ids: list[int], stop: list[str]) -> str:
    stream = TextStream(tokenizer, stop)
    pieces = []
    for token in ids:
        pieces.append(stream.push(token))
        if stream.stopped:
            break
    assert all(not any(s in piece for s in stop) for piece in pieces)
    return "".join(pieces) + stream.flush()


def _metaspace_tokenizer() -> BPETokenizer:
    """A SentencePiece-style tokenizer (words start with "▁", which decodes to a space except at the start of a
    text): decoding a token alone differs from decoding it in context."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(["the cat sat on the mat", "a dog and a cat"], trainers.BpeTrainer(vocab_size=60))
    return BPETokenizer(tok)


@pytest.mark.parametrize("make", [
    lambda: CharTokenizer.train("abc de\nfgh"),
    lambda: BPETokenizer.train(["plain ascii text, é and ✓ too"], vocab_size=270),
    _metaspace_tokenizer,
])
def test_text_stream_emits_the_whole_decoded_text_cut_at_the_first_stop_string(make):
    tokenizer = make()
    rng = random.Random(0)
    for trial in range(200):
        ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(1, 40))]
        full = tokenizer.decode(ids)
        start = rng.randrange(max(1, len(full)))
        stop = [full[start : start + rng.randrange(1, 4)], "zz"] if trial % 2 and full else []  # "zz": never met
        cuts = [full.find(s) for s in stop if s and s in full]
        expected = full[: min(cuts)] if cuts else full
        assert _stream_text(tokenizer, ids, stop) == expected, (ids, stop)


def test_sampling_config_rejects_bad_values():
    with pytest.raises(GenloomError, match="temperature"):
        SamplingConfig(temperature=-1)
    with pytest.raises(GenloomError, match="top_p"):
        SamplingConfig(top_p=1.5)
    with pytest.raises(GenloomError, match="max_new_tokens"):
        SamplingConfig(max_new_tokens=0)


def test_decoding_head_copy_follows_weight_updates(model):
    from genloom.generate.batch import decoding_head

    first = decoding_head(model)
    assert first.is_contiguous()  # on the CPU, the (d_model, vocab) copy BLAS multiplies a few rows by fastest
    assert decoding_head(model) is first  # reused between calls
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)
    torch.testing.assert_close(decoding_head(model), model.lm_head.weight.t())


def test_decoding_head_off_the_cpu_is_a_view_with_d_model_as_leading_dimension():
    """On a GPU a (d_model, vocab) copy would have the vocabulary as its leading dimension (odd for GPT-2: 50,257),
    which cuBLAS multiplies slowly in bf16; there the head is the embedding's own (vocab, d_model) memory."""
    from genloom.generate.batch import decoding_head

    config = GPTConfig(vocab_size=97, context_length=16, n_layers=1, d_model=32, n_heads=2)
    with torch.device("meta"):  # a device other than the CPU, without one
        gpt = GPT(config)
    head = decoding_head(gpt)
    assert head.shape == (32, 97) and head.stride() == (1, 32)
    assert head._is_view()  # of the embedding's memory: no second copy of the weights


def test_token_stream_yields_one_token_per_row_per_step(model):
    cfg = SamplingConfig(max_new_tokens=6, temperature=0)
    stream = TokenStream(model, PROMPTS, cfg)
    steps = list(stream)
    assert len(steps) == 6 and all(len(step) == len(PROMPTS) for step in steps)
    assert [[s[row] for s in steps] for row in range(len(PROMPTS))] == generate_tokens(model, PROMPTS, cfg)
    assert not stream.context_limited


def test_finishing_a_row_mid_stream_leaves_the_others_unchanged(model):
    cfg = SamplingConfig(max_new_tokens=8, temperature=0)
    stream = TokenStream(model, PROMPTS, cfg)
    seen: list[list[int | None]] = []
    for step, tokens in enumerate(stream):
        seen.append(tokens)
        if step == 2:
            stream.finish(1)  # the caller ends row 1 (a stop string, a client gone)
    assert all(tokens[1] is None for tokens in seen[3:]) and seen[2][1] is not None
    full = generate_tokens(model, PROMPTS, cfg)
    for row in (0, 2, 3):
        assert [tokens[row] for tokens in seen] == full[row]


def test_a_prompt_that_fills_the_context_yields_nothing_and_says_why(model, monkeypatch):
    tokenizer = CharTokenizer.train("".join(chr(ord("a") + i) for i in range(40)))
    prompt = "a" * model.config.context_length
    (full,) = generate(model, tokenizer, [prompt], SamplingConfig(max_new_tokens=5))
    assert full.tokens == [] and full.finish_reason == "length" and full.context_limited
    (capped,) = generate(model, tokenizer, ["a" * 44], SamplingConfig(max_new_tokens=100, temperature=0))
    assert len(capped.tokens) == 4 and capped.context_limited
    (short,) = generate(model, tokenizer, ["a"], SamplingConfig(max_new_tokens=3, temperature=0))
    assert short.finish_reason == "length" and not short.context_limited


def test_generation_never_samples_ids_the_tokenizer_lacks(model):
    tokenizer = CharTokenizer.train("abcdef")  # 6 ids; the model has 40 rows
    for seed in range(5):
        (out,) = generate(model, tokenizer, ["abc"], SamplingConfig(max_new_tokens=20, temperature=2.0, seed=seed))
        assert all(t < tokenizer.vocab_size for t in out.tokens)


class _ForceAfterFirst:
    """A decoder tool that feeds in two tokens after each row's first one."""

    def after_token(self, generated):
        return [5, 6] if len(generated) == 1 else []


def test_a_tools_tokens_are_part_of_each_rows_output():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, context_length=32, n_layers=1, d_model=16, n_heads=2)).eval()
    cfg = SamplingConfig(max_new_tokens=6, temperature=0)
    prompts = [[1, 2, 3], [9]]
    rows = generate_tokens(model, prompts, cfg, tool=_ForceAfterFirst())
    for prompt, tokens in zip(prompts, rows, strict=True):
        assert tokens[1:3] == [5, 6] and len(tokens) == 6
        assert tokens[3:] == generate_tokens(model, [prompt + tokens[:3]], replace(cfg, max_new_tokens=3))[0]
