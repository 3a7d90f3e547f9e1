"""Architecture summaries: parameter counts and the memory that training them needs."""

from __future__ import annotations

from genloom.models.gpt import GPTConfig, count_parameters

BYTES = {"fp32": 4, "bf16": 2}


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:,.2f} GiB"


def describe_gpt(config: GPTConfig, name: str = "") -> str:
    """Architecture, exact parameter count (meta device) and memory of weights / grads / AdamW state."""
    n = count_parameters(config)
    lines = [
        f"model:        GPT{f' ({name})' if name else ''}",
        f"layers:       {config.n_layers}",
        f"d_model:      {config.d_model}",
        f"heads:        {config.n_heads} (head dim {config.d_model // config.n_heads})",
        f"d_ff:         {config.hidden_dim} ({config.activation})",
        f"context:      {config.context_length}",
        f"vocab:        {config.vocab_size}",
        f"positions:    {config.positional}; norm: {config.norm}; qk-norm: {config.qk_norm}; "
        f"tied embeddings: {config.tie_embeddings}",
        f"parameters:   {n:,} ({n / 1e6:,.1f}M)",
        "memory (all tensors in one dtype; activations not included):",
        f"  {'dtype':<6}{'weights':>14}{'gradients':>14}{'AdamW state':>14}{'total':>14}",
    ]
    for dtype, size in BYTES.items():
        # AdamW keeps two moments (exp_avg, exp_avg_sq) per parameter.
        w, g, opt = n * size, n * size, 2 * n * size
        lines.append(f"  {dtype:<6}{_gib(w):>14}{_gib(g):>14}{_gib(opt):>14}{_gib(w + g + opt):>14}")
    return "\n".join(lines)
