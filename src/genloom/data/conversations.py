"""Conversation data for chat fine-tuning: read, check, encode with a loss mask, fit the context, batch.

- Files are JSONL, one `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}` per line
  (an optional `"family"` string groups them in evaluation); a bad line is a one-line error naming `file:line`.
- Encoding goes through the tokenizer's chat template (`tokenizers.chat_template.encode_chat`); the loss mask
  marks the assistant's tokens, each turn's closing token included.
- A conversation longer than the context is cut after the last assistant turn that fits (a turn boundary), or
  dropped when even its first answer does not fit; so is one the tokenizer cannot encode (a character-level
  vocabulary lacks a character). `FitReport` counts each, for the trainer to say.
- Two batch layouts: padding (one conversation per row, right-padded to the longest in the batch) and packing
  (several conversations per row of `context` tokens, each attending only to itself, positions restarting at 0;
  no compute is spent on padding, at the price of a full attention mask instead of the fused causal kernel).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from genloom.data.text import read_json_lines
from genloom.errors import GenloomError, UnencodableTextError
from genloom.tokenizers import Tokenizer
from genloom.tokenizers.chat_template import ChatFormat, check_messages, encode_chat

IGNORE = -100  # the target id cross-entropy skips: not the assistant's token, or padding


@dataclass(frozen=True)
class Conversation:
    messages: tuple[dict[str, str], ...]
    family: str = "file"  # for per-family accuracy: the built-in task, or the file record's "family"


def read_message_lines(path: Path) -> list[tuple[str, dict[str, object], list[dict[str, str]]]]:
    """(`file:line`, record, its checked messages) for every non-blank line of a JSONL file of
    `{"messages": [...]}` records; a GenloomError naming `file:line` for a malformed one."""
    if not path.is_file():
        raise GenloomError(f"conversation file {path} does not exist")
    records = []
    for n, record in read_json_lines(path):
        where = f"{path}:{n}"
        if not isinstance(record, dict) or "messages" not in record:
            raise GenloomError(f"{where}: expected an object with a \"messages\" list")
        records.append((where, record, check_messages(record["messages"], where)))
    if not records:
        raise GenloomError(f"{path} holds no conversations")
    return records


def read_conversations(path: Path) -> list[Conversation]:
    """The conversations of a JSONL file; a GenloomError naming `file:line` for a malformed record, an unknown
    role, a content that is not a string, or a conversation without an assistant turn."""
    conversations = []
    for where, record, messages in read_message_lines(path):
        if not any(m["role"] == "assistant" for m in messages):
            raise GenloomError(f"{where}: the conversation has no assistant turn to learn from")
        family = record.get("family", "file")
        if not isinstance(family, str):
            raise GenloomError(f"{where}: \"family\" must be a string")
        conversations.append(Conversation(tuple(messages), family))
    return conversations


def load_conversations(source: str, split: str, n: int, seed: int = 0, val_fraction: float = 0.1,
                       calculator: bool = False) -> list[Conversation]:
    """Conversations of `split` ("train", "val" or "test") from `builtin:NAME` (n generated, held-out questions
    never in train) or a JSONL file (the last `val_fraction` of it is "val"; "test" is the whole file, for
    evaluating on a file of one's own). `n` caps a file's split too. `calculator`: a built-in set's calculations
    call the chat calculator (a file's answers are as written)."""
    from genloom.data.builtin_chat import builtin_chat

    if source.startswith("builtin:"):
        examples = builtin_chat(source.removeprefix("builtin:"), split, n, seed, calculator)
        return [Conversation(tuple(e.messages), e.family) for e in examples]
    conversations = read_conversations(Path(source))
    if split == "test":
        return conversations[:n]
    n_val = max(1, int(len(conversations) * val_fraction))
    if n_val >= len(conversations):
        raise GenloomError(f"{source} has {len(conversations)} conversations: too few to keep {n_val} for "
                           "validation; add more or lower --val-fraction")
    chosen = conversations[-n_val:] if split == "val" else conversations[:-n_val]
    return chosen[:n]


def held_out_conversations(source: str, n: int, seed: int = 0, calculator: bool = False) -> list[Conversation]:
    """The conversations to evaluate on: `n` test questions per share of a built-in set (`builtin:chat` mixes
    all five families; `builtin:arithmetic+units` two), or the first `n` conversations of a file."""
    from genloom.data.builtin_chat import mixture

    shares = len(mixture(source.removeprefix("builtin:"))) if source.startswith("builtin:") else 1
    return load_conversations(source, "test", n * shares, seed, calculator=calculator)


def answer_of(conversation: Conversation) -> tuple[list[dict[str, str]], str]:
    """The conversation before its last assistant turn, and that turn's content (the expected answer)."""
    messages = list(conversation.messages)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


@dataclass(frozen=True)
class EncodedConversation:
    ids: list[int]
    mask: list[bool]  # mask[i]: token i was written by the assistant (the loss is on these)


@dataclass
class FitReport:
    """What fitting conversations to the context did."""

    kept: int = 0
    truncated: int = 0  # cut at a turn boundary to fit
    too_long: int = 0  # dropped: not even the first assistant turn fits
    unencodable: int = 0  # dropped: the tokenizer cannot encode them
    examples: list[str] = field(default_factory=list)  # a reason for the first few drops

    def summary(self) -> str:
        parts = [f"{self.kept} conversations"]
        if self.truncated:
            parts.append(f"{self.truncated} cut at a turn boundary to fit the context")
        if self.too_long:
            parts.append(f"{self.too_long} dropped as longer than the context")
        if self.unencodable:
            parts.append(f"{self.unencodable} dropped that the tokenizer cannot encode ({self.examples[0]})")
        return "; ".join(parts)


def encode_conversations(
    conversations: Sequence[Conversation], tokenizer: Tokenizer, chat_format: ChatFormat, context: int
) -> tuple[list[EncodedConversation], FitReport]:
    """Every conversation encoded to at most `context + 1` tokens (a row's inputs and its shifted targets)."""
    report = FitReport()
    encoded = []
    for conversation in conversations:
        messages = list(conversation.messages)
        try:
            ids, mask = encode_chat(tokenizer, chat_format, messages)
            cut = False
            while len(ids) > context + 1:
                # Drop the last turn and everything after the assistant turn before it.
                last = max((i for i, m in enumerate(messages[:-1]) if m["role"] == "assistant"), default=None)
                if last is None:
                    break
                messages = messages[: last + 1]
                ids, mask = encode_chat(tokenizer, chat_format, messages)
                cut = True
        except UnencodableTextError as e:  # a template problem, by contrast, is an error to fix
            report.unencodable += 1
            report.examples.append(str(e))
            continue
        if len(ids) > context + 1:
            report.too_long += 1
            continue
        report.kept += 1
        report.truncated += cut
        encoded.append(EncodedConversation(ids, mask))
    return encoded, report


def check_learnable(encoded: Sequence[EncodedConversation], report: FitReport, what: str) -> None:
    """A one-line error when nothing in `encoded` gives the loss a token (silently training on nothing is how
    other toolkits fail here)."""
    if not any(any(e.mask[1:]) for e in encoded):
        raise GenloomError(f"{what}: no assistant tokens to learn from after fitting the context ({report.summary()})")


def _shifted(conversation: EncodedConversation) -> tuple[list[int], list[int]]:
    """Inputs and next-token targets of one conversation; targets that are not the assistant's are IGNORE."""
    ids, mask = conversation.ids, conversation.mask
    targets = [t if m else IGNORE for t, m in zip(ids[1:], mask[1:], strict=True)]
    return ids[:-1], targets


def padded_batch(conversations: Sequence[EncodedConversation]) -> tuple[Tensor, Tensor]:
    """One conversation per row, right-padded to the longest: inputs (B, T) and targets (B, T). No attention
    mask is needed: with causal attention a real token never sees the padding after it."""
    pairs = [_shifted(c) for c in conversations]
    t = max(len(x) for x, _ in pairs)
    inputs = torch.zeros(len(pairs), t, dtype=torch.long)
    targets = torch.full((len(pairs), t), IGNORE, dtype=torch.long)
    for row, (x, y) in enumerate(pairs):
        inputs[row, : len(x)] = torch.tensor(x)
        targets[row, : len(y)] = torch.tensor(y)
    return inputs, targets


@dataclass(frozen=True)
class PackedRows:
    """Rows of `context` tokens, each holding whole conversations: (N, T) tensors."""

    inputs: Tensor
    targets: Tensor
    positions: Tensor  # restart at 0 with each conversation
    document_ids: Tensor  # which conversation of its row a token belongs to; -1 for padding at the row's end


def pack(conversations: Sequence[EncodedConversation], context: int, seed: int) -> PackedRows:
    """Shuffle (with `seed`), then fill rows of `context` tokens in order, starting a new row when the next
    conversation does not fit; what a row has left over is padding."""
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    rows: list[list[tuple[list[int], list[int]]]] = [[]]
    used = 0
    for i in order:
        x, y = _shifted(conversations[i])
        if used + len(x) > context and rows[-1]:
            rows.append([])
            used = 0
        rows[-1].append((x, y))
        used += len(x)
    n = len(rows)
    inputs = torch.zeros(n, context, dtype=torch.long)
    targets = torch.full((n, context), IGNORE, dtype=torch.long)
    positions = torch.zeros(n, context, dtype=torch.long)
    document_ids = torch.full((n, context), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for doc, (x, y) in enumerate(row):
            end = start + len(x)
            inputs[r, start:end] = torch.tensor(x)
            targets[r, start:end] = torch.tensor(y)
            positions[r, start:end] = torch.arange(len(x))
            document_ids[r, start:end] = doc
            start = end
    return PackedRows(inputs, targets, positions, document_ids)
