"""Exact-answer accuracy of a model on held-out conversations, by task family, before and after chat tuning.

- A chat model answers through its own chat template and stops at its end-of-turn token.
- A base (non-chat) model answers the same questions through a plain prompt (`User: …\\nAssistant:`, one line
  per turn) and its answer is the first line it writes, so the two are compared on identical questions.
- The last assistant turn of each conversation is the expected answer; the turns before it are the prompt.
  Answers are compared exactly, after stripping surrounding whitespace. Greedy decoding.
- A model trained with the calculator calls it while it answers; what is compared is the answer a reader sees,
  calls and results cut (`visible_text`), against the expected answer's visible text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from genloom.data.conversations import Conversation, answer_of
from genloom.errors import UnencodableTextError
from genloom.generate import SamplingConfig, generate
from genloom.models.gpt import GPT
from genloom.tokenizers import Tokenizer
from genloom.tokenizers.chat_tools import decoder_tool, visible_text

PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass
class FamilyScore:
    correct: int = 0
    total: int = 0
    unanswerable: int = 0  # counted wrong: the question does not fit the context, or the vocabulary lacks a character
    examples: list[tuple[str, str, str]] = field(default_factory=list)  # (question, expected, got), a few

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def plain_prompt(messages: Sequence[dict[str, str]]) -> str:
    """The conversation as plain text a base model can continue: `User: …`, `Assistant: …`, one per line."""
    lines = [f"{PLAIN_ROLES[m['role']]}: {m['content']}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def chat_accuracy(
    model: GPT, tokenizer: Tokenizer, conversations: Sequence[Conversation], batch_size: int = 32,
    max_new_tokens: int | None = None, plain: bool | None = None,
) -> dict[str, FamilyScore]:
    """Exact-answer accuracy by family. `plain` None: through the chat template when the tokenizer has one.
    `max_new_tokens` None: room for the longest expected answer and a few tokens more (its end, some slack)."""
    use_template = tokenizer.chat_format is not None if plain is None else not plain
    scores: dict[str, FamilyScore] = {}
    prompts: list[tuple[str, str, str, str]] = []  # (family, prompt text, expected, question)
    for conversation in conversations:
        history, expected = answer_of(conversation)
        score = scores.setdefault(conversation.family, FamilyScore())
        if use_template:
            assert tokenizer.chat_format is not None
            prompt = tokenizer.chat_format.render(history, add_generation_prompt=True)
        else:
            prompt = plain_prompt(history)
        try:
            size = len(tokenizer.encode(prompt))
        except UnencodableTextError:  # a character the vocabulary lacks: the model cannot be asked, so wrong
            size = None
        if size is None or size >= model.config.context_length:  # nor when the question fills the context
            score.total += 1
            score.unanswerable += 1
            continue
        prompts.append((conversation.family, prompt, expected, history[-1]["content"]))
    end_id = tokenizer.chat_format.end_id(tokenizer) if use_template and tokenizer.chat_format else None
    tool = decoder_tool(tokenizer) if use_template else None
    if max_new_tokens is None:
        longest = max((_token_count(tokenizer, expected) for _, _, expected, _ in prompts), default=0)
        max_new_tokens = longest + 4 + (8 if tool is not None else 0)  # a call's result may come out longer
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop=[] if use_template else ["\n"])
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        completions = generate(model, tokenizer, [p for _, p, _, _ in chunk], cfg, eos_id=end_id, tool=tool)
        for (family, _, expected, question), completion in zip(chunk, completions, strict=True):
            got = completion.text.strip()
            score = scores[family]
            score.total += 1
            score.correct += visible_text(got).strip() == visible_text(expected).strip()
            if len(score.examples) < 3:
                score.examples.append((question, expected, got))
    return scores


def _token_count(tokenizer: Tokenizer, text: str) -> int:
    try:
        return len(tokenizer.encode(text))
    except UnencodableTextError:  # an answer the model cannot write is wrong anyway; its length bounds the room
        return len(text)


def overall(scores: dict[str, FamilyScore]) -> float:
    total = sum(s.total for s in scores.values())
    return sum(s.correct for s in scores.values()) / total if total else 0.0


def format_scores(scores: dict[str, FamilyScore], title: str) -> str:
    """A small table: family, accuracy, correct/total."""
    lines = [title, f"  {'family':<14} {'accuracy':>8}  correct/total"]
    for family, s in sorted(scores.items()):
        lines.append(f"  {family:<14} {100 * s.accuracy:7.1f}%  {s.correct}/{s.total}")
    lines.append(f"  {'all':<14} {100 * overall(scores):7.1f}%")
    return "\n".join(lines)
