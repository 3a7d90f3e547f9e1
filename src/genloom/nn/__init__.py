"""The shared Transformer core. Imports nothing from `genloom.models`."""

from genloom.nn.attention import CrossKVCache, KVCache, MultiHeadAttention, build_attention_mask, build_document_mask
from genloom.nn.blocks import BlockConfig, TransformerBlock
from genloom.nn.layers import MLP, Linear, RMSNorm, make_norm
from genloom.nn.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    apply_rotary,
    sinusoidal_2d_table,
    sinusoidal_table,
)
from genloom.nn.transformer import TransformerStack, gpt2_init_

__all__ = [
    "MLP",
    "BlockConfig",
    "CrossKVCache",
    "KVCache",
    "LearnedPositionalEmbedding",
    "Linear",
    "MultiHeadAttention",
    "RMSNorm",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "TransformerBlock",
    "TransformerStack",
    "apply_rotary",
    "build_attention_mask",
    "build_document_mask",
    "gpt2_init_",
    "make_norm",
    "sinusoidal_2d_table",
    "sinusoidal_table",
]
