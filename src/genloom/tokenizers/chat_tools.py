"""A calculator the assistant calls in the middle of its answer, as nanochat's assistant does.

The assistant writes an expression between two special tokens; the decoder evaluates it and writes the result
between two more (the model never produces those), then the model goes on with the result in view:

    What is 48 * 37?  ->  <|calc_start|>48*37<|calc_end|><|output_start|>1776<|output_end|>1776

- Training: the result span, `<|output_start|>` through `<|output_end|>`, is the tool's and is left out of the
  loss (`tool_output_mask`); the model learns to write the call, to stop it, and to copy the result.
- Decoding: `Calculator.after_token` sees a row's tokens after each step and, at `<|calc_end|>`, returns the
  ids of the result span, which the engine feeds in before the model writes again (`DecodeBatch.force`).
- `visible_text` is what a user reads and what evaluation compares: the text with every call and result cut.
- Expressions are integers and decimals with + - * /, unary minus and parentheses, read with `ast` (never
  `eval`); anything else, a division by zero or a result too large evaluates to "error".
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from genloom.errors import GenloomError, UnencodableTextError

if TYPE_CHECKING:
    from genloom.tokenizers.base import Tokenizer

CALCULATOR = "calculator"
TOOLS = (CALCULATOR,)
CALC_START, CALC_END = "<|calc_start|>", "<|calc_end|>"
OUTPUT_START, OUTPUT_END = "<|output_start|>", "<|output_end|>"
TOOL_TOKENS: dict[str, tuple[str, ...]] = {CALCULATOR: (CALC_START, CALC_END, OUTPUT_START, OUTPUT_END)}

MAX_EXPRESSION = 64  # characters; a longer "expression" is the model rambling, not a calculation
MAX_RESULT = 10**15  # larger results (99 ** 99 style blow-ups cannot happen: there is no power) read "error"
_OPERATORS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
}
# A call and its result, or a call the model left open at the end of its answer.
_TOOL_SPANS = re.compile(re.escape(CALC_START) + ".*?(?:" + re.escape(CALC_END) + "|$)|" + re.escape(OUTPUT_START)
                         + ".*?(?:" + re.escape(OUTPUT_END) + "|$)", re.DOTALL)


def check_tools(tools: Sequence[str]) -> tuple[str, ...]:
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        raise GenloomError(f"unknown tool(s) {', '.join(unknown)}; choose from: {', '.join(TOOLS)}")
    return tuple(dict.fromkeys(tools))


def evaluate(expression: str) -> str:
    """The value of an arithmetic expression as the calculator writes it ("12*3" -> "36", "7/2" -> "3.5"), or
    "error"."""
    if len(expression) > MAX_EXPRESSION:
        return "error"
    try:
        value = _value(ast.parse(expression.strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return "error"
    if abs(value) >= MAX_RESULT:
        return "error"
    if value == int(value):
        return str(int(value))
    return f"{value:.6f}".rstrip("0")


def _value(node: ast.expr) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):  # not bool, complex or str
        return float(node.value)  # type: ignore[arg-type]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _value(node.operand)
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        result = _OPERATORS[type(node.op)](_value(node.left), _value(node.right))
        if abs(result) >= MAX_RESULT:  # stop before intermediate values grow without bound
            raise OverflowError
        return result
    raise ValueError("not arithmetic")


def calculator_answer(expression: str, answer: str) -> str:
    """An assistant answer that computes `expression` with the calculator, then states `answer`."""
    return f"{CALC_START}{expression}{CALC_END}{OUTPUT_START}{evaluate(expression)}{OUTPUT_END}{answer}"


def visible_text(text: str) -> str:
    """`text` without its calculator calls and results: the answer as its reader sees it."""
    return _TOOL_SPANS.sub("", text)


def tool_output_mask(ids: Sequence[int], tokenizer: Tokenizer) -> list[bool]:
    """Per token, whether it belongs to a result span the calculator wrote (never the model's to learn)."""
    if OUTPUT_START not in tokenizer.special_tokens:
        return [False] * len(ids)
    start, end = tokenizer.token_id(OUTPUT_START), tokenizer.token_id(OUTPUT_END)
    inside, mask = False, []
    for token in ids:
        inside = inside or token == start
        mask.append(inside)
        if token == end:
            inside = False
    return mask


class Calculator:
    """The decoder's side of the calculator for one tokenizer: after each token, what to feed in next."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.start, self.end, self.output_start, self.output_end = (tokenizer.token_id(t)
                                                                    for t in TOOL_TOKENS[CALCULATOR])

    def after_token(self, generated: Sequence[int]) -> list[int]:
        """The result span to force after a row's tokens `generated` when its last token closes a call, else []."""
        if not generated or generated[-1] != self.end:
            return []
        opened = [i for i, token in enumerate(generated[:-1]) if token == self.start]
        expression = self.tokenizer.decode(list(generated[opened[-1] + 1 : -1])) if opened else ""
        try:
            result = self.tokenizer.encode(evaluate(expression))
        except UnencodableTextError:  # a character vocabulary without "e", say: an empty result
            result = []
        return [self.output_start, *result, self.output_end]


def decoder_tool(tokenizer: Tokenizer) -> Calculator | None:
    """The calculator when the tokenizer's chat format was trained with it, else None."""
    chat_format = tokenizer.chat_format
    return Calculator(tokenizer) if chat_format is not None and CALCULATOR in chat_format.tools else None
