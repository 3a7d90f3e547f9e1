"""Encoder–decoder Transformer for translation ("Attention Is All You Need", Vaswani et al. 2017).

Both stacks are `genloom.nn.TransformerStack`: the encoder non-causal over the source, the decoder causal
over the target with cross-attention to the encoder output ("memory"). Presets `transformer-base` and
`transformer-big` follow the paper's Table 3; the small presets are for a laptop CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.config import from_presets
from genloom.errors import GenloomError
from genloom.nn import (
    BlockConfig,
    CrossKVCache,
    KVCache,
    SinusoidalPositionalEncoding,
    TransformerStack,
    build_attention_mask,
)
from genloom.nn.layers import Activation, Linear, NormKind, dropout_layer


@dataclass
class Seq2SeqConfig:
    vocab_size: int = 37000  # one vocabulary for source and target (the paper's shared BPE, §5.1)
    max_len: int = 256  # longest source or target sequence (size of the sinusoid table)
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048  # hidden width of the position-wise feed-forward network
    dropout: float = 0.1  # P_drop of §5.4: on embeddings + positions, attention weights and residual branches
    norm_first: bool = False  # False: post-norm as in the paper; True: pre-norm, easier to train without warmup
    activation: Activation = "relu"
    norm: NormKind = "layernorm"
    norm_eps: float = 1e-5
    bias: bool = True  # biases in Linear layers and LayerNorms
    tie_embeddings: bool = True  # one matrix for source embedding, target embedding and output projection (§3.4)
    pad_id: int = 0  # padding token id: masked out of every attention over the source

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "n_encoder_layers", "n_decoder_layers", "d_model", "n_heads", "d_ff"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} ({getattr(self, name)}) must be positive")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.d_model % 2:
            raise ValueError(f"d_model ({self.d_model}) must be even for sinusoidal positions")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout ({self.dropout}) must be in [0, 1)")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id ({self.pad_id}) must be a token id in [0, vocab_size {self.vocab_size})")

    def block_config(self, cross_attention: bool) -> BlockConfig:
        return BlockConfig(
            d_model=self.d_model, n_heads=self.n_heads, d_ff=self.d_ff, activation=self.activation, norm=self.norm,
            norm_first=self.norm_first, bias=self.bias, dropout=self.dropout, norm_eps=self.norm_eps,
            cross_attention=cross_attention,
        )


PRESETS: dict[str, Seq2SeqConfig] = {
    # Table 3 of the paper: base and big, both post-norm with ReLU and a 37000-token shared BPE (WMT14 en-de).
    "transformer-base": Seq2SeqConfig(),
    "transformer-big": Seq2SeqConfig(d_model=1024, n_heads=16, d_ff=4096, dropout=0.3),
    # CPU sizes. Pre-norm because post-norm needs a careful warmup to train at all (Xiong et al. 2020), and an
    # 8000-token vocabulary, a BPE size that suits a small parallel corpus.
    "transformer-small": Seq2SeqConfig(
        vocab_size=8000, max_len=128, n_encoder_layers=3, n_decoder_layers=3, d_model=256, n_heads=4, d_ff=1024,
        norm_first=True,
    ),
    "transformer-tiny": Seq2SeqConfig(
        vocab_size=8000, max_len=128, n_encoder_layers=2, n_decoder_layers=2, d_model=128, n_heads=4, d_ff=512,
        norm_first=True,
    ),
}


def preset(name: str, **overrides: object) -> Seq2SeqConfig:
    """A copy of preset `name` with `overrides` applied (e.g. vocab_size from the tokenizer)."""
    return from_presets(PRESETS, name, **overrides)


@dataclass
class Seq2SeqCache:
    """Decoder state for incremental decoding: per layer, the self-attention KV cache and the cross-attention
    keys/values of the memory. `cross_attn` is filled from the memory on the first `decode` call and reused."""

    self_attn: list[KVCache]
    cross_attn: list[CrossKVCache] | None = field(default=None)

    @property
    def length(self) -> int:
        """Target positions decoded so far."""
        return self.self_attn[0].length

    def reorder(self, batch_indices: Tensor) -> None:
        """Keep rows `batch_indices` of every cache (beam search re-ranks hypotheses between steps)."""
        for cache in self.self_attn:
            cache.reorder(batch_indices)
        for cross in self.cross_attn or []:
            cross.reorder(batch_indices)


class Seq2SeqTransformer(nn.Module):
    """Source tokens -> encoder memory; target prefix + memory -> next-target-token logits."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = config
        self.src_embedding = nn.Embedding(config.vocab_size, config.d_model)
        # With tying the same module serves both sides; `parameters()` yields it once.
        self.tgt_embedding = (
            self.src_embedding if config.tie_embeddings else nn.Embedding(config.vocab_size, config.d_model)
        )
        self.positions = SinusoidalPositionalEncoding(config.max_len, config.d_model)
        self.embed_dropout = dropout_layer(config.dropout)
        self.encoder = TransformerStack(config.block_config(cross_attention=False), config.n_encoder_layers)
        self.decoder = TransformerStack(config.block_config(cross_attention=True), config.n_decoder_layers)
        self.output = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_embeddings:
            self.output.weight = self.src_embedding.weight
        # §3.4: embeddings are multiplied by sqrt(d_model); with N(0, 1/d_model) initial embeddings (as
        # fairseq and tensor2tensor use) the scaled embedding has unit variance, like the sinusoids.
        self.embed_scale = math.sqrt(config.d_model)

    def _init_weights(self) -> None:
        # Glorot-uniform matrices as the reference implementations (tensor2tensor, fairseq) use; our
        # `Linear` stores (in, out), which Glorot's symmetric bound does not mind.
        for module in self.modules():
            if isinstance(module, Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=self.config.d_model**-0.5)
        nn.init.normal_(self.output.weight, mean=0.0, std=self.config.d_model**-0.5)

    def num_parameters(self) -> int:
        """Unique parameters (tied embeddings count once)."""
        return sum(p.numel() for p in self.parameters())

    def _embed(self, embedding: nn.Embedding, tokens: Tensor, start: int) -> Tensor:
        t = tokens.shape[1]
        if start + t > self.config.max_len:
            raise GenloomError(f"sequence of {start + t} tokens exceeds the model's max_len {self.config.max_len}")
        x = embedding(tokens) * self.embed_scale + self.positions.table[start : start + t]  # (B, T, d_model)
        return self.embed_dropout(x)

    def source_key_valid(self, src: Tensor) -> Tensor:
        """(B, S) True at real source tokens, False at `pad_id`."""
        return src != self.config.pad_id

    def encode(self, src: Tensor, src_key_valid: Tensor | None = None) -> Tensor:
        """src: (B, S) token ids, padded with pad_id -> memory (B, S, d_model).

        Memory rows at padding positions are finite but meaningless; `decode` masks them out. Every source
        needs at least one real token (an all-padding row has nothing to attend to).
        """
        if src_key_valid is None:
            src_key_valid = self.source_key_valid(src)
        x = self._embed(self.src_embedding, src, 0)
        mask = build_attention_mask(src_key_valid, src.shape[1], 0, causal=False, device=src.device)  # (B,1,S,S)
        return self.encoder(x, mask=mask)

    def make_kv_caches(self, batch_size: int, max_len: int | None = None) -> Seq2SeqCache:
        """Empty decoder caches for `batch_size` rows and up to `max_len` target positions."""
        p = self.src_embedding.weight
        return Seq2SeqCache(
            self.decoder.make_kv_caches(batch_size, max_len or self.config.max_len, p.device, p.dtype)
        )

    def decode(
        self, tgt: Tensor, memory: Tensor, src_key_valid: Tensor | None, kv_caches: Seq2SeqCache | None = None
    ) -> Tensor:
        """Next-token logits (B, T, vocab_size) for target prefix tgt (B, T) given memory (B, S, d_model).

        src_key_valid: (B, S) True at real source tokens (None: all real). kv_caches: from `make_kv_caches`,
        filled in place; tgt then holds only the new positions, and the memory's cross-attention keys/values
        are projected on the first call and reused after, so a decoding step costs O(1) in the source length
        apart from the attention itself.
        """
        past = kv_caches.length if kv_caches is not None else 0
        x = self._embed(self.tgt_embedding, tgt, past)
        context_mask = src_key_valid[:, None, None, :] if src_key_valid is not None else None  # (B, 1, 1, S)
        cross = None
        if kv_caches is not None:
            if kv_caches.cross_attn is None:
                kv_caches.cross_attn = self.decoder.make_cross_kv_caches(memory)
            cross = kv_caches.cross_attn
        # Targets are right-padded, so causality alone keeps padding out of every real position.
        h = self.decoder(
            x, is_causal=True, kv_caches=kv_caches.self_attn if kv_caches is not None else None,
            context=memory, context_mask=context_mask, cross_kv_caches=cross,
        )
        return self.output(h)

    def decode_rows(
        self,
        tokens: Tensor,
        positions: Tensor,
        key_valid: Tensor,
        self_caches: list[KVCache],
        cross_caches: list[CrossKVCache],
        src_key_valid: Tensor,
    ) -> Tensor:
        """One decoding step of rows that are each at their own target position, with their own sources: next-token
        logits (B, vocab_size).

        tokens, positions: (B, 1). key_valid: (B, W) True at each row's own self-attention columns, its new token's
        included. self_caches: per layer, caches that write each row's key at its own column (`SlotKVCache`s of
        genloom.generate.batch quack as KVCache), whose `length` is the widest row's position. cross_caches: per
        layer, the rows' projected memories (B, H, S, hd); src_key_valid: (B, S) True at their real source
        tokens."""
        # The caches know the widest row in Python (its position is the cache's length): no device sync a step.
        last = self_caches[0].length
        if last >= self.config.max_len:
            raise GenloomError(f"target position {last} exceeds the model's max_len {self.config.max_len}")
        x = self.embed_dropout(self.tgt_embedding(tokens) * self.embed_scale + self.positions(positions))  # (B, 1, d)
        h = self.decoder(x, mask=key_valid[:, None, None, :], kv_caches=self_caches,
                         context_mask=src_key_valid[:, None, None, :], cross_kv_caches=cross_caches)
        return self.output(h[:, -1])

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, vocab_size): src (B, S), tgt_in (B, T) = BOS + target[:-1]."""
        src_key_valid = self.source_key_valid(src)
        memory = self.encode(src, src_key_valid)
        return self.decode(tgt_in, memory, src_key_valid)

    def loss(self, src: Tensor, tgt_in: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy; targets (B, T) with -100 ignored."""
        logits = self(src, tgt_in)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


def count_parameters(config: Seq2SeqConfig) -> int:
    """Exact parameter count, built on the meta device so the big preset allocates nothing."""
    with torch.device("meta"):
        return Seq2SeqTransformer(config).num_parameters()
