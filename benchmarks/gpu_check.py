"""GPU equivalence checks and decoding speed (called by gpu_check.sh)."""

from __future__ import annotations

import time

import torch

from genloom.generate import SamplingConfig, generate_tokens
from genloom.models.gpt import GPT, GPTConfig, preset


def main() -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, context_length=64, n_layers=2, d_model=64, n_heads=4)).to(device).eval()
    idx = torch.randint(0, 97, (2, 20), device=device)
    with torch.no_grad():
        full = model(idx)
        caches = model.make_kv_caches(2)
        steps = [model(idx[:, :8], kv_caches=caches)]  # prefill 8, then one token at a time
        steps += [model(idx[:, t : t + 1], kv_caches=caches) for t in range(8, 20)]
    cached = torch.cat(steps, dim=1)
    print(f"cached vs full forward on cuda: max abs diff {(cached - full).abs().max().item():.2e}")
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]
    cfg = SamplingConfig(max_new_tokens=16, temperature=0)
    batched = generate_tokens(model, prompts, cfg)
    alone = [generate_tokens(model, [p], cfg)[0] for p in prompts]
    print(f"ragged batch == one by one on cuda: {batched == alone}")

    gpt2 = GPT(preset("gpt2")).to(device).eval()
    for dtype in (torch.float32, torch.bfloat16):
        gpt2 = gpt2.to(dtype)
        for batch in (1, 8):
            prompt = torch.randint(0, 50257, (batch, 16)).tolist()
            greedy = SamplingConfig(max_new_tokens=128, temperature=0, stop_at_eos=False)
            generate_tokens(gpt2, prompt, SamplingConfig(max_new_tokens=8, temperature=0))
            torch.cuda.synchronize()
            start = time.perf_counter()
            generate_tokens(gpt2, prompt, greedy)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            print(f"gpt2 124M {str(dtype)[6:]} batch {batch}: {batch * 128 / seconds:,.0f} tokens/s on cuda")


if __name__ == "__main__":
    main()
