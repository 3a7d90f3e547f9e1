"""Generation: sampling and KV-cached decoding."""

from genloom.generate.lm import Completion, TokenStream, generate, generate_tokens
from genloom.generate.sampling import SamplingConfig

__all__ = ["Completion", "SamplingConfig", "TokenStream", "generate", "generate_tokens"]
