"""Chat fine-tuning: the loss is the same whether conversations are packed or padded, a run adds the chat tokens
to its base and saves the template with it, resumes, and fine-tunes a Hugging Face GPT-2 directory too."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from chat_helpers import BASE_CONTEXT, make_base, make_calculator_chat, printable_chars

from genloom.checkpoint import save_checkpoint
from genloom.data.conversations import encode_conversations, load_conversations, pack
from genloom.errors import GenloomError
from genloom.eval.chat import chat_accuracy
from genloom.generate import SamplingConfig
from genloom.generate.chat import ChatSession
from genloom.models.gpt import GPT, GPTConfig
from genloom.registry import load_language_model
from genloom.run_record import read_data_record
from genloom.tokenizers import BPETokenizer
from genloom.tokenizers.chat_template import CHATML, add_chat_tokens
from genloom.tokenizers.chat_tools import CALC_END, CALC_START, OUTPUT_END, OUTPUT_START
from genloom.train.chat import ChatDataSpec, ChatTask, _padded, chat_base, train_chat
from genloom.train.config import TrainConfig

CONTEXT = BASE_CONTEXT
DATA = ChatDataSpec(train_examples=120, val_examples=8)


def _train_config(out: Path, steps: int = 4) -> TrainConfig:
    return TrainConfig(out_dir=str(out), max_steps=steps, eval_interval=2, eval_batches=1, batch_size=4,
                       device="cpu", progress=False, warmup_steps=1)


def test_packed_and_padded_batches_have_the_same_loss_and_tokens(tmp_path: Path) -> None:
    model, tokenizer = chat_base(make_base(tmp_path / "base"))
    assert tokenizer.chat_format is not None
    conversations = load_conversations("builtin:arithmetic", "train", 2)  # ~40 tokens each: one row
    encoded, _ = encode_conversations(conversations, tokenizer, tokenizer.chat_format, CONTEXT)
    task = ChatTask(model.config, tokenizer, encoded, encoded, batch_size=2, packing=False, seed=0)
    rows = pack(encoded, CONTEXT, seed=0)
    assert len(rows.inputs) == 1
    packed = (rows.inputs, rows.targets, rows.positions, rows.document_ids)
    padded = _padded(encoded)
    torch.testing.assert_close(task.loss(model, packed), task.loss(model, padded))
    assert task.count_tokens(packed) == task.count_tokens(padded) == sum(len(e.ids) - 1 for e in encoded)


def test_train_chat_adds_the_template_and_resumes(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    base_vocab = load_language_model(base)[0].config.vocab_size
    lines: list[str] = []
    run = train_chat(str(base), DATA, _train_config(tmp_path / "chat"), say=lines.append)
    assert run.result.step == 4 and run.result.tokens_seen > 0 and "conversations" in lines[0]
    model, tokenizer = load_language_model(tmp_path / "chat")
    assert tokenizer.chat_format == CHATML and model.config.vocab_size == base_vocab + 2
    assert read_data_record(tmp_path / "chat")["base"] == str(base)
    resumed = train_chat(str(base), DATA, _train_config(tmp_path / "chat", steps=6), resume=True, say=lines.append)
    assert resumed.result.step == 6 and resumed.result.tokens_seen > run.result.tokens_seen
    session = ChatSession(model, tokenizer, SamplingConfig(max_new_tokens=5, temperature=0.0))
    assert isinstance(session.reply("What is 2 + 3?").text, str) and len(session.turns) == 2


def test_a_run_with_nothing_to_learn_is_refused(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base", context=24)  # shorter than any conversation
    with pytest.raises(GenloomError, match="no assistant tokens to learn from"):
        train_chat(str(base), DATA, _train_config(tmp_path / "chat"), say=lambda _: None)


def test_a_hugging_face_gpt2_directory_is_fine_tuned_and_chats(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    texts = [m["content"] for c in load_conversations("builtin:chat", "train", 200) for m in c.messages]
    tokenizer = BPETokenizer.train(texts, vocab_size=400)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, n_positions=CONTEXT, vocab_size=tokenizer.vocab_size + 3))  # padded
    hf.save_pretrained(tmp_path / "hf")
    tokenizer.save(tmp_path / "hf")
    run = train_chat(str(tmp_path / "hf"), DATA, _train_config(tmp_path / "chat"), say=lambda _: None)
    model, chat_tokenizer = load_language_model(tmp_path / "chat")
    # The padding rows are gone; the two chat tokens follow the BPE's own ids.
    assert model.config.vocab_size == tokenizer.vocab_size + 2 == chat_tokenizer.vocab_size
    assert chat_tokenizer.token_id("<|im_start|>") == tokenizer.vocab_size
    assert run.result.step == 4
    reply = ChatSession(model, chat_tokenizer, SamplingConfig(max_new_tokens=4, temperature=0.0)).reply("hi")
    assert "<|im_end|>" not in reply.text


def test_a_chat_base_keeps_its_template(tmp_path: Path) -> None:
    chars = printable_chars()
    add_chat_tokens(chars)
    config = GPTConfig(vocab_size=chars.vocab_size, context_length=CONTEXT, n_layers=1, d_model=16, n_heads=2)
    save_checkpoint(tmp_path / "chat-base", GPT(config), "gpt", config, chars)
    model, tokenizer = chat_base(tmp_path / "chat-base")
    assert model.config.vocab_size == chars.vocab_size and tokenizer.chat_format == CHATML


def test_train_chat_with_the_calculator_learns_calls_not_results(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    base_vocab = load_language_model(base)[0].config.vocab_size
    data = replace(DATA, data="builtin:arithmetic", tools=("calculator",))
    train_chat(str(base), data, _train_config(tmp_path / "chat"), say=lambda _: None)
    model, tokenizer = load_language_model(tmp_path / "chat")
    assert tokenizer.chat_format == CHATML.with_tools(["calculator"])
    assert model.config.vocab_size == base_vocab + 6  # ChatML's 2 tokens and the calculator's 4
    assert read_data_record(tmp_path / "chat")["tools"] == ["calculator"]
    conversations = load_conversations("builtin:arithmetic", "train", 20, calculator=True)
    encoded, _ = encode_conversations(conversations, tokenizer, tokenizer.chat_format, CONTEXT)
    for conversation in encoded:
        learned = tokenizer.decode([t for t, m in zip(conversation.ids, conversation.mask, strict=True) if m])
        assert learned.startswith(CALC_START) and OUTPUT_START not in learned  # the call, never its result
    # A chat model that already calls the calculator keeps its vocabulary when fine-tuned again with it.
    again, _ = chat_base(tmp_path / "chat", ("calculator",))
    assert again.config.vocab_size == model.config.vocab_size


def test_chat_and_evaluation_run_the_calculator(tmp_path: Path) -> None:
    model, tokenizer = load_language_model(make_calculator_chat(tmp_path / "calc"))
    session = ChatSession(model, tokenizer, SamplingConfig(max_new_tokens=12, temperature=0.0))
    # The model only ever closes calls; each close is answered by the calculator's result span.
    assert session.reply("What is 2 + 3?").text.startswith(f"{CALC_END}{OUTPUT_START}error{OUTPUT_END}{CALC_END}")
    questions = load_conversations("builtin:arithmetic", "test", 2, calculator=True)
    scores = chat_accuracy(model, tokenizer, questions)["arithmetic"]
    assert scores.total == 2 and scores.correct == 0
    _, expected, got = scores.examples[0]
    assert expected.startswith(CALC_START) and f"{OUTPUT_START}error{OUTPUT_END}" in got
