"""A base model for the chat tests: a random-weight character GPT that can read every built-in conversation."""

from __future__ import annotations

import string
from pathlib import Path

import torch

from genloom.checkpoint import save_checkpoint
from genloom.models.gpt import GPT, GPTConfig
from genloom.tokenizers import CharTokenizer
from genloom.tokenizers.chat_template import CHATML, add_chat_tokens
from genloom.tokenizers.chat_tools import CALC_END

BASE_CONTEXT = 96


def printable_chars() -> CharTokenizer:
    """Every printable ASCII character but tabs and the rarer line breaks."""
    return CharTokenizer(sorted(set(string.printable) - set("\t\r\x0b\x0c")))


def make_base(directory: Path, context: int = BASE_CONTEXT) -> Path:
    chars = printable_chars()
    config = GPTConfig(vocab_size=chars.vocab_size, context_length=context, n_layers=1, d_model=32, n_heads=2)
    torch.manual_seed(0)
    save_checkpoint(directory, GPT(config), "gpt", config, chars)
    return directory


def make_calculator_chat(directory: Path, context: int = BASE_CONTEXT) -> Path:
    """A chat checkpoint trained (as far as its template says) with the calculator, whose model writes
    `<|calc_end|>` whatever it reads: every answer is a run of empty calls, each answered by the calculator
    with `<|output_start|>error<|output_end|>`, so a test sees whether the decoding path runs the tool."""
    chars = printable_chars()
    add_chat_tokens(chars, CHATML.with_tools(["calculator"]))
    config = GPTConfig(vocab_size=chars.vocab_size, context_length=context, n_layers=1, d_model=32, n_heads=2)
    model = GPT(config)
    with torch.no_grad():  # blocks add nothing, the final norm outputs its bias, the head reads it as calc_end
        for p in model.parameters():
            p.zero_()
        norm = model.transformer.final_norm
        assert norm is not None and norm.bias is not None
        norm.bias.fill_(1.0)
        model.lm_head.weight[chars.token_id(CALC_END)] = 1.0  # tied: the embedding row too, which norm ignores
    save_checkpoint(directory, model, "gpt", config, chars)
    return directory
