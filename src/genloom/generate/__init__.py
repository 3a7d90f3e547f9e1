"""Generation: sampling and KV-cached decoding."""

from genloom.generate.lm import Completion, generate, generate_tokens
from genloom.generate.sampling import SamplingConfig

__all__ = ["Completion", "SamplingConfig", "generate", "generate_tokens"]
