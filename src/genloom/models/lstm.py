"""LSTM sequence-to-sequence baseline: Sutskever et al. 2014 without attention, Bahdanau et al. 2015 with it.

A (bi)LSTM encoder reads the source; an LSTM decoder starts from the encoder's last state. With
`attention=True` every decoder step first attends additively over the encoder outputs with its previous
state, and feeds the context into the LSTM with the previous target token (Bahdanau et al. 2015, §3.1).
The interface matches `Seq2SeqTransformer` (`encode`, `decode`, `forward(src, tgt_in)`), so training and
generation code serve both; `decode_step` carries the recurrent state for incremental decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from genloom.config import from_presets
from genloom.nn.layers import Linear, dropout_layer

State = tuple[Tensor, Tensor]  # LSTM (h, c), each (n_decoder_layers, B, hidden_size)


@dataclass
class LSTMConfig:
    vocab_size: int = 8000  # one vocabulary for source and target, as the Transformer presets use
    embed_dim: int = 256  # token embedding width (also the width fed to the output projection)
    hidden_size: int = 256  # LSTM state width (per direction in the encoder)
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    bidirectional: bool = True  # encoder reads the source both ways (Bahdanau et al. 2015)
    attention: bool = True  # additive attention over encoder outputs; False: the last encoder state only
    attention_dim: int | None = None  # width of the additive attention's hidden layer; None means hidden_size
    dropout: float = 0.1  # on embeddings, between LSTM layers and before the output projection
    tie_embeddings: bool = True  # one matrix for source embedding, target embedding and output projection
    pad_id: int = 0  # padding token id: excluded from the encoder (packed) and from attention

    def __post_init__(self) -> None:
        for name in ("vocab_size", "embed_dim", "hidden_size", "n_encoder_layers", "n_decoder_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} ({getattr(self, name)}) must be positive")
        if self.attention_dim is not None and self.attention_dim <= 0:
            raise ValueError(f"attention_dim ({self.attention_dim}) must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout ({self.dropout}) must be in [0, 1)")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id ({self.pad_id}) must be a token id in [0, vocab_size {self.vocab_size})")

    @property
    def encoder_dim(self) -> int:
        """Width of the encoder outputs (the memory): both directions concatenated."""
        return self.hidden_size * (2 if self.bidirectional else 1)


PRESETS: dict[str, LSTMConfig] = {
    # The size of `transformer-small` at the same 8000-token vocabulary: 7,606,536 vs 7,578,624 parameters.
    "lstm-small": LSTMConfig(embed_dim=256, hidden_size=280),
}


def preset(name: str, **overrides: object) -> LSTMConfig:
    """A copy of preset `name` with `overrides` applied (e.g. vocab_size from the tokenizer)."""
    return from_presets(PRESETS, name, **overrides)


class AdditiveAttention(nn.Module):
    """Bahdanau attention: score(s, h_j) = vᵀ tanh(W s + U h_j), softmax over real source positions."""

    def __init__(self, query_dim: int, key_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.query_proj = Linear(query_dim, attention_dim, bias=False)
        self.key_proj = Linear(key_dim, attention_dim)
        self.score = Linear(attention_dim, 1, bias=False)

    def project_keys(self, memory: Tensor) -> Tensor:
        """U h_j for every source position, (B, S, attention_dim): computed once per sentence, not per step."""
        return self.key_proj(memory)

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, key_valid: Tensor | None) -> Tensor:
        """query (B, query_dim), keys (B, S, A), memory (B, S, key_dim) -> context (B, key_dim)."""
        scores = self.score(torch.tanh(keys + self.query_proj(query)[:, None, :])).squeeze(-1)  # (B, S)
        if key_valid is not None:
            scores = scores.masked_fill(~key_valid, float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # (B, S)
        return torch.bmm(weights[:, None, :], memory).squeeze(1)  # (B, key_dim)


class LSTMSeq2Seq(nn.Module):
    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.src_embedding = nn.Embedding(c.vocab_size, c.embed_dim)
        self.tgt_embedding = self.src_embedding if c.tie_embeddings else nn.Embedding(c.vocab_size, c.embed_dim)
        self.dropout = dropout_layer(c.dropout)
        self.encoder = nn.LSTM(
            c.embed_dim, c.hidden_size, c.n_encoder_layers, batch_first=True, bidirectional=c.bidirectional,
            dropout=c.dropout if c.n_encoder_layers > 1 else 0.0,
        )
        # Bahdanau et al. §A.2.2: s_0 = tanh(W_s h_1 backward); we feed both directions' final states.
        self.bridge = Linear(c.encoder_dim, c.hidden_size)
        context_dim = c.encoder_dim if c.attention else 0
        self.attention = (
            AdditiveAttention(c.hidden_size, c.encoder_dim, c.attention_dim or c.hidden_size) if c.attention else None
        )
        self.decoder = nn.LSTM(
            c.embed_dim + context_dim, c.hidden_size, c.n_decoder_layers, batch_first=True,
            dropout=c.dropout if c.n_decoder_layers > 1 else 0.0,
        )
        # A "deep output" layer maps [state; context] to embedding width, so the output projection can be tied.
        self.pre_output = Linear(c.hidden_size + context_dim, c.embed_dim)
        self.output = nn.Linear(c.embed_dim, c.vocab_size, bias=False)
        for module in (self.src_embedding, self.tgt_embedding):
            nn.init.normal_(module.weight, mean=0.0, std=c.embed_dim**-0.5)
        if c.tie_embeddings:
            self.output.weight = self.src_embedding.weight

    def num_parameters(self) -> int:
        """Unique parameters (tied embeddings count once)."""
        return sum(p.numel() for p in self.parameters())

    def source_key_valid(self, src: Tensor) -> Tensor:
        """(B, S) True at real source tokens, False at `pad_id`."""
        return src != self.config.pad_id

    def encode(self, src: Tensor, src_key_valid: Tensor | None = None) -> Tensor:
        """src (B, S) padded with pad_id -> memory (B, S, encoder_dim), zeros at padding positions.

        The padded batch is packed so that padding never enters the recurrence: the backward direction
        starts at each row's own last real token, exactly as for that sentence alone.
        """
        if src_key_valid is None:
            src_key_valid = self.source_key_valid(src)
        lengths = src_key_valid.sum(dim=1).clamp(min=1).cpu()  # packing wants lengths on the CPU
        x = self.dropout(self.src_embedding(src))  # (B, S, embed_dim)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        return memory

    def init_state(self, memory: Tensor, src_key_valid: Tensor | None) -> State:
        """Decoder state from the encoder's last state, read off the memory so that beam search only has to
        expand and reorder one tensor: the forward direction at the last real token, the backward direction
        at the first. Every decoder layer starts from h_0 = tanh(W [fwd; bwd]) and c_0 = 0."""
        b, s, _ = memory.shape
        hidden = self.config.hidden_size
        if src_key_valid is None:
            last = torch.full((b,), s - 1, device=memory.device)
        else:
            last = (src_key_valid.sum(dim=1) - 1).clamp(min=0)
        final = memory[torch.arange(b, device=memory.device), last]  # (B, encoder_dim)
        if self.config.bidirectional:
            final = torch.cat([final[:, :hidden], memory[:, 0, hidden:]], dim=-1)
        h0 = torch.tanh(self.bridge(final))  # (B, hidden)
        h = h0.unsqueeze(0).repeat(self.config.n_decoder_layers, 1, 1).contiguous()  # (L, B, hidden)
        return h, torch.zeros_like(h)

    def _logits(self, out: Tensor, context: Tensor | None) -> Tensor:
        features = out if context is None else torch.cat([out, context], dim=-1)
        return self.output(self.dropout(torch.tanh(self.pre_output(features))))

    def _recur(
        self, tokens: Tensor, state: State, memory: Tensor, keys: Tensor | None, src_key_valid: Tensor | None
    ) -> tuple[Tensor, Tensor | None, State]:
        """One step of the recurrence: tokens (B, 1) -> decoder output (B, hidden), context (B, encoder_dim)."""
        x = self.dropout(self.tgt_embedding(tokens))  # (B, 1, embed_dim)
        context = None
        if self.attention is not None:
            assert keys is not None
            context = self.attention(state[0][-1], keys, memory, src_key_valid)  # from s_{t-1}: (B, encoder_dim)
            x = torch.cat([x, context[:, None, :]], dim=-1)
        out, state = self.decoder(x, state)  # (B, 1, hidden)
        return out[:, 0], context, state

    def project_keys(self, memory: Tensor) -> Tensor | None:
        """The attention's keys for `memory` (None without attention); pass them to every `decode_step`."""
        return self.attention.project_keys(memory) if self.attention is not None else None

    def decode_step(
        self,
        tokens: Tensor,
        state: State | None,
        memory: Tensor,
        src_key_valid: Tensor | None,
        keys: Tensor | None = None,
    ) -> tuple[Tensor, State]:
        """One target step: tokens (B, 1) -> logits (B, vocab_size) and the new state (None: `init_state`).
        keys: `project_keys(memory)`, computed once per batch by the caller (recomputed here if None)."""
        if state is None:
            state = self.init_state(memory, src_key_valid)
        if keys is None:
            keys = self.project_keys(memory)
        out, context, state = self._recur(tokens, state, memory, keys, src_key_valid)
        return self._logits(out, context), state

    def decode(
        self, tgt: Tensor, memory: Tensor, src_key_valid: Tensor | None, state: State | None = None
    ) -> Tensor:
        """Teacher-forced logits (B, T, vocab_size) for tgt (B, T); the recurrence keeps right-padding out of
        every real position. state: where to continue from (None: `init_state`)."""
        if state is None:
            state = self.init_state(memory, src_key_valid)
        if self.attention is None:
            # Without attention nothing couples the steps but the LSTM itself, so cuDNN/MKL runs them all.
            out, _ = self.decoder(self.dropout(self.tgt_embedding(tgt)), state)  # (B, T, hidden)
            return self._logits(out, None)
        # Each step's attention reads the previous step's state, so the recurrence is an explicit loop; the
        # output layers (the vocabulary projection is most of the work) then run once over all steps.
        keys = self.project_keys(memory)
        outs, contexts = [], []
        for t in range(tgt.shape[1]):
            out, context, state = self._recur(tgt[:, t : t + 1], state, memory, keys, src_key_valid)
            assert context is not None
            outs.append(out)
            contexts.append(context)
        return self._logits(torch.stack(outs, dim=1), torch.stack(contexts, dim=1))  # (B, T, vocab_size)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, vocab_size): src (B, S), tgt_in (B, T) = BOS + target[:-1]."""
        src_key_valid = self.source_key_valid(src)
        return self.decode(tgt_in, self.encode(src, src_key_valid), src_key_valid)

    def loss(self, src: Tensor, tgt_in: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy; targets (B, T) with -100 ignored."""
        logits = self(src, tgt_in)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


def count_parameters(config: LSTMConfig) -> int:
    """Exact parameter count, built on the meta device."""
    with torch.device("meta"):
        return LSTMSeq2Seq(config).num_parameters()
