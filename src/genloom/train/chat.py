"""Supervised fine-tuning of a GPT into a chat model: the chat task for the shared Trainer, and `train chat`.

- The base is any GPT: a genloom checkpoint or run, or a Hugging Face GPT-2 directory. A base without a chat
  template gets ChatML's tokens (appended to its tokenizer: char, BPE or GPT-2's) and its embedding and head
  grown to match, new rows at the mean of the old ones; a chat model fine-tuned further keeps its template.
- The loss is on the assistant's tokens only, each turn's closing `<|im_end|>` included, so the model learns
  to answer and to stop; a run whose data leaves no such token is refused.
- Batches pack several conversations per row (document masking: each attends only to itself, its positions
  restart at 0) or pad one per row; validation is always padded, one conversation per row, so both layouts
  report the same validation loss. Packing is the default: 1.5x the tokens per second (benchmarks/chat_sft.py).
- What fitting the context did (cut at a turn boundary, dropped) is reported before training starts.
- `tools=("calculator",)` teaches the assistant to call the chat calculator (`tokenizers.chat_tools`): its
  tokens join the template, the built-in sets' calculations are written as calls, and the results the
  calculator feeds in are left out of the loss.
- Every validation also measures exact-answer accuracy on held-out conversations (`val_answer_accuracy`, greedy),
  and that picks `best/`: the validation loss is a token average that long answers dominate (a `pydoc` sentence
  is 100 tokens, a sum 2), and on the built-in set it rises as the model memorises the training topics while the
  short answers still improve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom import registry
from genloom.data.conversations import (
    IGNORE,
    Conversation,
    EncodedConversation,
    FitReport,
    PackedRows,
    check_learnable,
    encode_conversations,
    load_conversations,
    pack,
    padded_batch,
)
from genloom.errors import GenloomError
from genloom.eval.chat import chat_accuracy, overall
from genloom.models.gpt import GPT, GPTConfig
from genloom.tokenizers import Tokenizer
from genloom.tokenizers.chat_template import CHATML, ChatFormat, add_chat_tokens
from genloom.tokenizers.chat_tools import CALCULATOR
from genloom.train.config import TrainConfig
from genloom.train.run import new_model, saved_run
from genloom.train.task import Batch, Goal, Task
from genloom.train.trainer import Trainer, TrainResult

PACKING_DEFAULT = True  # benchmarks/chat_sft.py: 1.5x the conversation tokens per second of padding
BEST_METRIC = "val_answer_accuracy"
VAL_QUESTIONS = 64  # held-out conversations answered at every validation


@dataclass
class ChatDataSpec:
    """Which conversations to fine-tune on, and how to batch them."""

    data: str = "builtin:chat"  # a JSONL file of {"messages": [...]} or builtin:NAME
    train_examples: int = 20_000  # conversations drawn from a built-in set (a file: all of them)
    val_examples: int = 200  # validation conversations (a built-in set's val split; a file's last part)
    val_fraction: float = 0.1  # of a file, for validation
    packing: bool = PACKING_DEFAULT
    seed: int = 0  # of the built-in conversations
    tools: tuple[str, ...] = ()  # tools the assistant learns to call ("calculator")


class ChatTask(Task):
    """Conversations, the loss on the assistant's tokens."""

    family = "gpt"
    metric_goals: ClassVar[dict[str, Goal]] = {BEST_METRIC: "max"}

    def __init__(self, model_config: GPTConfig, tokenizer: Tokenizer, train: list[EncodedConversation],
                 val: list[EncodedConversation], batch_size: int, packing: bool, seed: int,
                 questions: list[Conversation] | None = None) -> None:
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.train, self.val = train, val
        self.questions = questions or []  # held-out conversations whose last answer validation checks
        self.batch_size = batch_size
        self.rows: PackedRows | None = pack(train, model_config.context_length, seed) if packing else None

    def micro_batches(self, generator: torch.Generator, rank: int, world_size: int, n_micro: int) -> list[Batch]:
        # Draw the whole global batch on every process, then keep this process's slice (as the LM task does).
        b = self.batch_size
        population = len(self.rows.inputs) if self.rows is not None else len(self.train)
        picks = torch.randint(population, (b * n_micro * world_size,), generator=generator)
        mine = picks[rank * b * n_micro : (rank + 1) * b * n_micro]
        return [self._batch(mine[i * b : (i + 1) * b].tolist()) for i in range(n_micro)]

    def _batch(self, picks: list[int]) -> Batch:
        if self.rows is not None:
            rows = self.rows
            return rows.inputs[picks], rows.targets[picks], rows.positions[picks], rows.document_ids[picks]
        return _padded([self.train[i] for i in picks])

    def val_batches(self, n: int, rank: int, world_size: int) -> list[Batch]:
        # The same conversations in the same order every time, whatever the layout of training batches.
        b = self.batch_size
        batches: list[Batch] = []
        for i in range(n):
            start = i * b * world_size + rank * b
            batches.append(_padded([self.val[(start + j) % len(self.val)] for j in range(b)]))
        return batches

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        if len(batch) == 4:  # packed rows
            x, y, positions, document_ids = batch
            logits = model(x, positions=positions, document_ids=document_ids)  # (B, T, V)
        else:
            x, y, _ = batch
            logits = model(x)
        if not bool((y != IGNORE).any()):  # cross-entropy over no tokens is NaN; this batch teaches nothing
            return logits.sum() * 0.0
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE)

    def validation_metrics(self, model: nn.Module) -> dict[str, float]:
        if not self.questions:
            return {}
        assert isinstance(model, GPT) and self.tokenizer is not None
        return {BEST_METRIC: overall(chat_accuracy(model, self.tokenizer, self.questions))}

    def count_tokens(self, batch: Batch) -> int:
        """The conversations' tokens, padding not counted: what packing and padding both have to get through."""
        if len(batch) == 4:
            return int((batch[3] >= 0).sum())
        return int(batch[2].sum())


def _padded(conversations: list[EncodedConversation]) -> Batch:
    inputs, targets = padded_batch(conversations)
    lengths = torch.tensor([len(c.ids) - 1 for c in conversations])
    return inputs, targets, lengths


@dataclass
class ChatRun:
    model: GPT
    result: TrainResult
    fit: FitReport  # what fitting the training conversations to the context did
    base: str  # the base checkpoint


def chat_base(base: Path, tools: tuple[str, ...] = ()) -> tuple[GPT, Tokenizer]:
    """The base model with a chat template: its own, or ChatML's tokens added and the vocabulary grown to hold
    them; `tools` add their tokens the same way. A one-line error for a checkpoint that is not a GPT."""
    loaded = registry.load_pretrained(base)
    if loaded.family != "gpt":
        raise GenloomError(f"--base {base} holds a {loaded.family} model; chat fine-tuning needs a GPT language "
                           "model (a genloom `train lm` run or a Hugging Face GPT-2 directory)")
    model, tokenizer = loaded.model, loaded.tokenizer
    assert isinstance(model, GPT) and tokenizer is not None
    if tokenizer.chat_format is None or not set(tools) <= set(tokenizer.chat_format.tools):
        real = tokenizer.vocab_size  # the ids in use; a Hugging Face model may pad its vocabulary past them
        add_chat_tokens(tokenizer, (tokenizer.chat_format or CHATML).with_tools(tools))
        model.resize_vocabulary(tokenizer.vocab_size, keep=min(real, model.config.vocab_size))
    elif tokenizer.vocab_size != model.config.vocab_size:
        model.resize_vocabulary(tokenizer.vocab_size, keep=min(tokenizer.vocab_size, model.config.vocab_size))
    return model, tokenizer


def train_chat(
    base: str, data: ChatDataSpec, train: TrainConfig, resume: bool = False, say: Callable[[str], None] = print,
) -> ChatRun:
    """Fine-tune `base` on `data`'s conversations. On --resume the run's own model and tokenizer continue, and
    `base` is only what the run record names."""
    if resume:
        saved = saved_run("gpt", train)
        tokenizer = saved.tokenizer
        if tokenizer is None or tokenizer.chat_format is None:
            raise GenloomError(f"--resume: {saved.checkpoint} is not a chat run (its tokenizer has no chat template)")
        model = new_model("gpt", saved.config, train.seed)  # the trainer loads its weights
        assert isinstance(model, GPT)
    else:
        model, tokenizer = chat_base(Path(base), data.tools)
    chat_format = tokenizer.chat_format
    assert chat_format is not None
    context = model.config.context_length
    train_set, fit = _encoded(data, "train", data.train_examples, tokenizer, chat_format, context)
    say(f"training conversations: {fit.summary()}")
    val_set, val_fit = _encoded(data, "val", data.val_examples, tokenizer, chat_format, context)
    questions = load_conversations(data.data, "val", VAL_QUESTIONS, data.seed + 1, data.val_fraction,
                                   calculator=CALCULATOR in chat_format.tools)
    task = ChatTask(model.config, tokenizer, train_set, val_set, train.batch_size, data.packing, train.seed,
                    questions)
    if train.best_metric == "val_loss":  # the default: a chat run is judged by its answers (see above)
        train = replace(train, best_metric=BEST_METRIC)
    record = {"data": data.data, "base": base, "packing": data.packing, "seed": data.seed,
              "tools": list(chat_format.tools),
              "train_conversations": fit.summary(), "val_conversations": val_fit.summary()}
    result = Trainer(task, model, train, run_record=record).fit(resume=resume)
    return ChatRun(model, result, fit, base)


def _encoded(data: ChatDataSpec, split: str, n: int, tokenizer: Tokenizer, chat_format: ChatFormat,
             context: int) -> tuple[list[EncodedConversation], FitReport]:
    conversations = load_conversations(data.data, split, n, data.seed, data.val_fraction,
                                       calculator=CALCULATOR in chat_format.tools)
    encoded, report = encode_conversations(conversations, tokenizer, chat_format, context)
    check_learnable(encoded, report, f"the {split} conversations of {data.data}")
    return encoded, report
