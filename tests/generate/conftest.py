"""Fixtures shared by the generation tests."""

from __future__ import annotations

import pytest
import torch
from translation_helpers import train_briefly

from genloom.models.gpt import GPT, GPTConfig


@pytest.fixture(scope="session", params=["seq2seq", "lstm"])
def translator(request, tmp_path_factory):
    """A briefly trained translation model of each family, its tokenizer and its run dir (trained once a session)."""
    out = tmp_path_factory.mktemp(request.param)
    model, tok = train_briefly(request.param, out)
    return model, tok, out


@pytest.fixture(params=["learned", "rotary"])
def model(request) -> GPT:
    """A 2-layer GPT of 40 tokens and 64 positions, with each positional scheme, its logits far from ties."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=40, context_length=64, n_layers=2, d_model=32, n_heads=4,
                        positional=request.param))
    with torch.no_grad():  # larger weights than the 0.02 init, so logits are far from ties
        for p in gpt.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return gpt.eval()
