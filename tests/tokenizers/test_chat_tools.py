"""The chat calculator: safe evaluation, the text a reader sees, no loss on the results it writes, what the
decoder feeds in after a call, and the template that remembers it through a save."""

from __future__ import annotations

from pathlib import Path

import pytest

from genloom.errors import GenloomError
from genloom.tokenizers import CharTokenizer
from genloom.tokenizers.chat_template import CHATML, ChatFormat, add_chat_tokens, encode_chat
from genloom.tokenizers.chat_tools import (
    CALC_END,
    CALC_START,
    OUTPUT_END,
    OUTPUT_START,
    Calculator,
    calculator_answer,
    decoder_tool,
    evaluate,
    tool_output_mask,
    visible_text,
)


@pytest.mark.parametrize(("expression", "value"), [
    ("12+37", "49"), ("4*151", "604"), ("3-45", "-42"), ("-5-3", "-8"), ("(2+3)*4", "20"), ("74000/1000", "74"),
    ("7/2", "3.5"), ("7/3", "2.333333"), (" 8 * 9 ", "72"), ("3.5*2", "7"),
])
def test_arithmetic_is_evaluated(expression: str, value: str) -> None:
    assert evaluate(expression) == value


@pytest.mark.parametrize("expression", [
    "", "12+", "1/0", "2**10", "True+1", "'a'*3", "__import__('os').system('true')", "x+1", "abs(-1)", "1e20*1e20",
    "9" * 80, "(1j)*2", "[1]*3",
])
def test_anything_but_arithmetic_is_an_error(expression: str) -> None:
    assert evaluate(expression) == "error"


def test_visible_text_cuts_calls_and_results() -> None:
    answer = calculator_answer("12+37", "49")
    assert answer == f"{CALC_START}12+37{CALC_END}{OUTPUT_START}49{OUTPUT_END}49"
    assert visible_text(answer) == "49"
    assert visible_text(f"So {answer} in all.") == "So 49 in all."
    assert visible_text(f"7{CALC_START}1+") == "7"  # a call the model never closed
    assert visible_text("no tools") == "no tools"


def _chat_chars() -> CharTokenizer:
    tokenizer = CharTokenizer.train("What is 0123456789 +-*/.? error\n systemuserassistant")
    add_chat_tokens(tokenizer, CHATML.with_tools(["calculator"]))
    return tokenizer


def test_results_are_left_out_of_the_loss() -> None:
    tokenizer = _chat_chars()
    assert tokenizer.chat_format is not None
    messages = [{"role": "user", "content": "What is 12+37?"},
                {"role": "assistant", "content": calculator_answer("12+37", "49")}]
    ids, mask = encode_chat(tokenizer, tokenizer.chat_format, messages)
    learned = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert learned == f"{CALC_START}12+37{CALC_END}49<|im_end|>"  # the call and the answer, not the result
    spans = tool_output_mask(ids, tokenizer)
    assert tokenizer.decode([t for t, inside in zip(ids, spans, strict=True) if inside]) == \
        f"{OUTPUT_START}49{OUTPUT_END}"


def test_the_calculator_answers_a_closed_call_only() -> None:
    tokenizer = _chat_chars()
    calculator = Calculator(tokenizer)
    written = tokenizer.encode(f"{CALC_START}48*37")
    assert calculator.after_token(written) == []  # still open
    assert tokenizer.decode(calculator.after_token(written + tokenizer.encode(CALC_END))) == \
        f"{OUTPUT_START}1776{OUTPUT_END}"
    assert tokenizer.decode(calculator.after_token(tokenizer.encode(f"{CALC_START}48*{CALC_END}"))) == \
        f"{OUTPUT_START}error{OUTPUT_END}"
    # The last call counts: an earlier call's result is already in the text.
    two = tokenizer.encode(f"{calculator_answer('1+1', '2')} {CALC_START}2+5{CALC_END}")
    assert tokenizer.decode(calculator.after_token(two)) == f"{OUTPUT_START}7{OUTPUT_END}"


def test_a_vocabulary_without_the_result_characters_gets_an_empty_result() -> None:
    tokenizer = CharTokenizer.train("What is 12+ ")
    add_chat_tokens(tokenizer, CHATML.with_tools(["calculator"]))
    forced = Calculator(tokenizer).after_token(tokenizer.encode(f"{CALC_START}1+2{CALC_END}"))  # "3" is missing
    assert tokenizer.decode(forced) == f"{OUTPUT_START}{OUTPUT_END}"


def test_the_template_keeps_its_tools_through_a_save(tmp_path: Path) -> None:
    tokenizer = _chat_chars()
    assert tokenizer.chat_format is not None and tokenizer.chat_format.tools == ("calculator",)
    tokenizer.chat_format.save(tmp_path)
    loaded = ChatFormat.load(tmp_path)
    assert loaded == tokenizer.chat_format
    assert isinstance(decoder_tool(tokenizer), Calculator)
    plain = CharTokenizer.train("abc")
    add_chat_tokens(plain)
    assert decoder_tool(plain) is None and CHATML.with_tools(["calculator"]).with_tools(["calculator"]) == \
        CHATML.with_tools(["calculator"])


def test_an_unknown_tool_is_refused() -> None:
    with pytest.raises(GenloomError, match="unknown tool"):
        CHATML.with_tools(["browser"])
