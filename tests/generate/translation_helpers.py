"""Small translation models trained in the test session, shared by the translation and translation-batch tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from genloom.data.builtin_parallel import builtin_pairs
from genloom.tokenizers import Tokenizer
from genloom.train.config import TrainConfig
from genloom.train.translate import train_translation

TRAIN = builtin_pairs("numbers", "digits", "en", "train", max_digits=2)
VAL = builtin_pairs("numbers", "digits", "en", "val", max_digits=2)
# Training pairs, and inputs it never saw (longer, odd), so hypotheses differ in length and some hit the limit.
SOURCES = [s for s, _ in TRAIN[::7]] + ["123", "7 7 7", "hello", "9"]

OVERRIDES = {
    "seq2seq": dict(d_model=32, n_heads=4, d_ff=64, dropout=0.1, n_encoder_layers=1, n_decoder_layers=2, max_len=24),
    "lstm": dict(embed_dim=32, hidden_size=32, n_encoder_layers=1, n_decoder_layers=2, dropout=0.1),
}


def train_briefly(family: str, out: Path) -> tuple[nn.Module, Tokenizer]:
    """A briefly trained model (partly right, partly wrong: a stronger test of equivalences), in eval mode."""
    torch.set_num_threads(2)
    lr = 5e-3 if family == "seq2seq" else 1e-2
    cfg = TrainConfig(out_dir=str(out), max_steps=150, lr=lr, min_lr=0.0, warmup_steps=10, weight_decay=0.0,
                      eval_interval=150, eval_batches=1, log_interval=40, device="cpu", progress=False)
    preset = "transformer-tiny" if family == "seq2seq" else "lstm-small"
    model, tok, _ = train_translation(TRAIN, VAL, family, preset, cfg, vocab_size=300, max_tokens=256,
                                      model_overrides=OVERRIDES[family])
    model.eval()
    return model, tok
