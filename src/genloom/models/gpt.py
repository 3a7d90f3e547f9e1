"""GPT: a decoder-only Transformer language model (Radford et al. 2019; Brown et al. 2020).

Presets cover GPT-2 (small … xl) and the eight GPT-3 sizes of the GPT-3 paper, Table 2.1. Other recipes
(rotary, SwiGLU, RMSNorm, QK-norm) are config switches over the same shared core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.config import from_presets
from genloom.errors import GenloomError
from genloom.nn import (
    BlockConfig,
    KVCache,
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    TransformerStack,
    build_attention_mask,
    build_document_mask,
    gpt2_init_,
)
from genloom.nn.layers import Activation, NormKind, dropout_layer

Positional = Literal["learned", "sinusoidal", "rotary"]


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # GPT-2's byte-level BPE vocabulary
    context_length: int = 1024  # maximum sequence length (block size)
    n_layers: int = 12
    d_model: int = 768
    n_heads: int = 12
    d_ff: int | None = None  # hidden width of the MLP; None means 4 * d_model (8/3 * d_model for SwiGLU)
    dropout: float = 0.0  # on embeddings, attention weights and residual branches
    bias: bool = True  # biases in Linear layers and LayerNorms
    positional: Positional = "learned"
    activation: Activation = "gelu_tanh"  # GPT-2 uses the tanh approximation ("gelu_new")
    norm: NormKind = "layernorm"
    norm_eps: float = 1e-5
    qk_norm: bool = False
    tie_embeddings: bool = True  # share the token embedding with the output head (GPT-2 does)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "n_layers", "d_model", "n_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} ({getattr(self, name)}) must be positive")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.d_ff is not None and self.d_ff <= 0:
            raise ValueError(f"d_ff ({self.d_ff}) must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout ({self.dropout}) must be in [0, 1)")
        if self.positional not in ("learned", "sinusoidal", "rotary"):
            raise ValueError(f"unknown positional {self.positional!r}")

    @property
    def hidden_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.activation == "swiglu":
            # Keeps the parameter count of a 4*d GELU MLP (Shazeer 2020), rounded to a multiple of 64.
            return 64 * math.ceil(8 * self.d_model / 3 / 64)
        return 4 * self.d_model

    def block_config(self) -> BlockConfig:
        return BlockConfig(
            d_model=self.d_model, n_heads=self.n_heads, d_ff=self.hidden_dim, activation=self.activation,
            norm=self.norm, norm_first=True, bias=self.bias, dropout=self.dropout, qk_norm=self.qk_norm,
            norm_eps=self.norm_eps,
        )


def _gpt3(n_layers: int, d_model: int, n_heads: int) -> GPTConfig:
    return GPTConfig(context_length=2048, n_layers=n_layers, d_model=d_model, n_heads=n_heads)


PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_layers=12, d_model=768, n_heads=12),
    "gpt2-medium": GPTConfig(n_layers=24, d_model=1024, n_heads=16),
    "gpt2-large": GPTConfig(n_layers=36, d_model=1280, n_heads=20),
    "gpt2-xl": GPTConfig(n_layers=48, d_model=1600, n_heads=25),
    # GPT-3 paper, Table 2.1 (context 2048, d_ff = 4 * d_model).
    "gpt3-small": _gpt3(12, 768, 12),
    "gpt3-medium": _gpt3(24, 1024, 16),
    "gpt3-large": _gpt3(24, 1536, 16),
    # Table 2.1 lists 24 heads of 128 dims for the 1.3B model, but 24 * 128 != 2048 = d_model; 16 heads
    # of 128 keeps both d_model and d_head, and the 1.3B parameter count the name promises.
    "gpt3-xl": _gpt3(24, 2048, 16),
    "gpt3-2.7b": _gpt3(32, 2560, 32),
    "gpt3-6.7b": _gpt3(32, 4096, 32),
    "gpt3-13b": _gpt3(40, 5120, 40),
    "gpt3-175b": _gpt3(96, 12288, 96),
    # Small models for a laptop CPU: nanoGPT's Shakespeare CPU configuration and a modernised variant.
    # "tiny" is nanoGPT's model exactly: no biases, exact GELU (tanh-approximate GELU is 4x slower on CPU).
    "tiny": GPTConfig(context_length=64, n_layers=4, d_model=128, n_heads=4, bias=False, activation="gelu"),
    "tiny-modern": GPTConfig(
        context_length=64, n_layers=4, d_model=128, n_heads=4, positional="rotary", activation="swiglu",
        norm="rmsnorm", qk_norm=True, bias=False,
    ),
}
PRESETS["gpt2-small"] = PRESETS["gpt2"]
PRESETS["gpt3-125m"] = PRESETS["gpt3-small"]
PRESETS["gpt3-350m"] = PRESETS["gpt3-medium"]
PRESETS["gpt3-760m"] = PRESETS["gpt3-large"]
PRESETS["gpt3-1.3b"] = PRESETS["gpt3-xl"]


def preset(name: str, **overrides: object) -> GPTConfig:
    """A copy of preset `name` with `overrides` applied (e.g. vocab_size from the tokenizer)."""
    return from_presets(PRESETS, name, **overrides)


class GPT(nn.Module):
    """Token embedding + positions -> causal Transformer stack -> vocabulary logits."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding: nn.Module | None = None
        self.rotary: RotaryEmbedding | None = None
        if config.positional == "learned":
            self.position_embedding = LearnedPositionalEmbedding(config.context_length, config.d_model)
        elif config.positional == "sinusoidal":
            self.position_embedding = SinusoidalPositionalEncoding(config.context_length, config.d_model)
        else:
            self.rotary = RotaryEmbedding(config.d_model // config.n_heads, config.context_length)
        self.embed_dropout = dropout_layer(config.dropout)
        self.transformer = TransformerStack(config.block_config(), config.n_layers)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight
        gpt2_init_(self, config.n_layers)

    def num_parameters(self) -> int:
        """Unique parameters (a tied head counts once)."""
        return sum(p.numel() for p in self.parameters())

    def make_kv_caches(self, batch_size: int, max_len: int | None = None) -> list[KVCache]:
        p = self.token_embedding.weight
        return self.transformer.make_kv_caches(batch_size, max_len or self.config.context_length, p.device, p.dtype)

    def hidden_states(
        self,
        idx: Tensor,
        *,
        positions: Tensor | None = None,
        attention_mask: Tensor | None = None,
        kv_caches: list[KVCache] | None = None,
        last_only: bool = False,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """Final hidden states, (B, T, d_model) or (B, 1, d_model) with last_only; `forward` without the head.

        idx: (B, T) token ids. positions: (B, T) position ids (default: continue after the cache).
        attention_mask: (B, T_past + T) True for real tokens, for left-padded batches.
        kv_caches: one per layer from `make_kv_caches`, filled in place. last_only: the last position
        only, which is all that sampling needs. document_ids: (B, T) for rows packing several documents, each
        attending only to itself (give `positions` restarting at 0 with each document too); no cache.
        """
        t = idx.shape[1]
        past = kv_caches[0].length if kv_caches is not None else 0
        if past + t > self.config.context_length:
            raise GenloomError(
                f"sequence of {past + t} tokens exceeds the model's context of {self.config.context_length}"
            )
        default_positions = positions is None
        if positions is None:
            positions = torch.arange(past, past + t, device=idx.device).unsqueeze(0)  # (1, T)
        x = self.token_embedding(idx)  # (B, T, d_model)
        if isinstance(self.position_embedding, LearnedPositionalEmbedding) and default_positions:
            # A slice, not a lookup: its backward is a copy instead of an embedding scatter-add.
            x = x + self.position_embedding.weight[past : past + t]
        elif self.position_embedding is not None:
            x = x + self.position_embedding(positions)
        x = self.embed_dropout(x)
        rotary = self.rotary(positions) if self.rotary is not None else None
        mask = None
        if document_ids is not None:
            assert kv_caches is None and attention_mask is None, "document_ids is for training on packed rows"
            mask = build_document_mask(document_ids)
        elif attention_mask is not None:
            mask = build_attention_mask(attention_mask, t, past, causal=True, device=idx.device)
        x = self.transformer(x, mask=mask, is_causal=True, rotary=rotary, kv_caches=kv_caches)
        return x[:, -1:, :] if last_only else x

    def forward(
        self,
        idx: Tensor,
        *,
        positions: Tensor | None = None,
        attention_mask: Tensor | None = None,
        kv_caches: list[KVCache] | None = None,
        last_only: bool = False,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """Next-token logits (B, T, vocab_size); arguments as for `hidden_states`."""
        hidden = self.hidden_states(
            idx, positions=positions, attention_mask=attention_mask, kv_caches=kv_caches, last_only=last_only,
            document_ids=document_ids,
        )
        return self.lm_head(hidden)

    @torch.no_grad()
    def resize_vocabulary(self, vocab_size: int, keep: int | None = None) -> None:
        """Resize the token embedding and the head to `vocab_size` rows, for tokens added to the tokenizer (chat
        markers). The first `keep` rows (default: all old rows that fit) keep their values, so outputs on those
        tokens are unchanged; every other row starts at their mean, so a new token looks like an average token
        rather than a random direction that dominates the logits (Hewitt 2021, "Initializing new word
        embeddings"). `keep` below the old size also replaces rows a Hugging Face model pads its vocabulary
        with, which no token uses."""
        old = self.config.vocab_size
        keep = min(old, vocab_size) if keep is None else keep
        if not 0 < keep <= min(old, vocab_size):
            raise GenloomError(f"cannot keep {keep} rows when resizing the vocabulary from {old} to {vocab_size}")

        def resized(weight: Tensor) -> Tensor:
            new_rows = weight[:keep].mean(0, keepdim=True).expand(vocab_size - keep, -1)
            return torch.cat([weight[:keep], new_rows])  # (vocab_size, d_model)

        embedding, head = self.token_embedding.weight, self.lm_head.weight
        self.token_embedding = nn.Embedding(vocab_size, self.config.d_model, device=embedding.device,
                                            dtype=embedding.dtype)
        self.token_embedding.weight.copy_(resized(embedding))
        self.lm_head = nn.Linear(self.config.d_model, vocab_size, bias=False, device=head.device, dtype=head.dtype)
        if self.config.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight
        else:
            self.lm_head.weight.copy_(resized(head))
        self.config = replace(self.config, vocab_size=vocab_size)

    def loss(self, idx: Tensor, targets: Tensor) -> Tensor:
        """Mean next-token cross-entropy; targets (B, T) with -100 ignored."""
        logits = self(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-100)


def count_parameters(config: GPTConfig) -> int:
    """Exact parameter count, built on the meta device so even 175B allocates nothing."""
    with torch.device("meta"):
        return GPT(config).num_parameters()
