"""genloom: generative models built from one Transformer core."""

__version__ = "0.1.0"
