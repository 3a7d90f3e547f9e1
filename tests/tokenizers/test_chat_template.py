"""Chat templates: rendering identical to transformers' `apply_chat_template`, the assistant-token mask, the
sandbox, adding the ChatML tokens to every kind of tokenizer, and saving the template with the tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genloom.errors import GenloomError
from genloom.tokenizers import BPETokenizer, CharTokenizer, find_tokenizer
from genloom.tokenizers.chat_template import (
    CHATML,
    IM_END,
    IM_START,
    ChatFormat,
    add_chat_tokens,
    check_messages,
    encode_chat,
    encode_prompt,
)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "Now add 5 to that."},
    {"role": "assistant", "content": "10"},
]
TEXT = "What is the answer? Be brief. Now add 5 to that, reverse these words: 2 + 3 = 10 system user assistant.\n"


def _chars() -> CharTokenizer:
    return CharTokenizer.train(TEXT)


def test_chatml_renders_as_the_published_template() -> None:
    text = CHATML.render(CONVERSATION[:2], add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_rendering_matches_transformers_apply_chat_template(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tokenizer = BPETokenizer.train([TEXT] * 4, vocab_size=300)
    add_chat_tokens(tokenizer)
    tokenizer.save(tmp_path)
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path)  # reads tokenizer_config.json's template
    for messages in (CONVERSATION, CONVERSATION[:2], CONVERSATION[1:3]):
        for generation_prompt in (False, True):
            expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
            assert CHATML.render(messages, add_generation_prompt=generation_prompt) == expected


def test_the_mask_covers_each_answer_and_its_closing_token_only() -> None:
    tokenizer = _chars()
    add_chat_tokens(tokenizer)
    ids, mask = encode_chat(tokenizer, CHATML, CONVERSATION)
    assert tokenizer.decode(ids) == CHATML.render(CONVERSATION)
    spans, current = [], []
    for token, mine in zip(ids, mask, strict=True):
        if mine:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    assert spans == [f"5{IM_END}", f"10{IM_END}"]  # the newline after <|im_end|> is the template's, not learnt
    # The prompt a chat model continues is the conversation so far with the generation prompt.
    prompt = encode_prompt(tokenizer, CHATML, CONVERSATION[:2])
    assert ids[: len(prompt)] == prompt and mask[len(prompt) - 1] is False and mask[len(prompt)] is True


def test_a_template_without_assistant_text_is_refused() -> None:
    silent = ChatFormat("{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}{% endif %}"
                        "{% endfor %}")
    with pytest.raises(GenloomError, match="renders no assistant span"):
        encode_chat(_chars(), silent, CONVERSATION)


def test_a_template_that_does_not_render_turn_by_turn_is_refused() -> None:
    reordered = ChatFormat("{% for m in messages|reverse %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(GenloomError, match="turn by turn"):
        encode_chat(_chars(), reordered, CONVERSATION)


def test_templates_run_in_a_sandbox() -> None:
    escape = ChatFormat("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(GenloomError, match="cannot render the chat template"):
        escape.render(CONVERSATION)
    with pytest.raises(GenloomError, match="refused the conversation: no system"):
        ChatFormat("{{ raise_exception('no system') }}").render(CONVERSATION)
    with pytest.raises(GenloomError, match="not valid Jinja"):
        ChatFormat("{% for %}").render(CONVERSATION)


@pytest.mark.parametrize("make", [_chars, lambda: BPETokenizer.train([TEXT] * 4, vocab_size=300)])
def test_adding_the_chat_tokens_keeps_every_old_id(make, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tokenizer = make()
    before, n = tokenizer.encode(TEXT), tokenizer.vocab_size
    start, end = add_chat_tokens(tokenizer)
    assert (start, end) == (n, n + 1) and tokenizer.vocab_size == n + 2
    assert tokenizer.encode(TEXT) == before
    assert tokenizer.encode(f"{IM_START}user\n") == [start, *tokenizer.encode("user\n")]
    tokenizer.save(tmp_path)
    loaded = find_tokenizer(tmp_path)
    assert loaded is not None and loaded.chat_format == CHATML
    assert loaded.encode(CHATML.render(CONVERSATION)) == tokenizer.encode(CHATML.render(CONVERSATION))


def test_gpt2_files_get_the_chat_tokens_after_their_vocabulary(tmp_path: Path) -> None:
    trained = BPETokenizer.train([TEXT] * 4, vocab_size=300)
    vocab = trained.tokenizer.get_vocab()
    model = json.loads(trained.tokenizer.to_str())["model"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(
        " ".join(m) if isinstance(m, list) else m for m in model["merges"]) + "\n")
    gpt2 = BPETokenizer.load(tmp_path)
    n = gpt2.vocab_size
    assert add_chat_tokens(gpt2) == [n, n + 1]


def test_a_chat_tokenizer_that_lost_its_special_tokens_is_refused(tmp_path: Path) -> None:
    tokenizer = _chars()
    tokenizer.save(tmp_path)
    CHATML.save(tmp_path)  # the template, but a vocabulary without <|im_start|> / <|im_end|>
    with pytest.raises(GenloomError, match=r"needs the special token\(s\) <\|im_start\|>, <\|im_end\|>"):
        find_tokenizer(tmp_path)


def test_messages_are_checked() -> None:
    with pytest.raises(GenloomError, match="message 1 has role 'robot'"):
        check_messages([{"role": "robot", "content": "hi"}])
    with pytest.raises(GenloomError, match="content that is not a string"):
        check_messages([{"role": "user", "content": 3}])
    with pytest.raises(GenloomError, match="non-empty list"):
        check_messages([])
