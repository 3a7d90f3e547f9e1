"""Generation speed: GPT-2 small (124M, random weights), fp32, CPU, 2 threads.

genloom `generate_tokens` vs transformers `generate` on the same weights, in the same run: 16-token
prompts, 128 new greedy tokens, batch 1 and batch 8. Batch-1 decoding must read every weight once per
token, so memory bandwidth (measured here in the same run) caps it at bandwidth / weight bytes.

Usage: python benchmarks/generate_speed.py [--new-tokens 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import print_table, set_threads

from genloom.generate import SamplingConfig, generate_tokens
from genloom.interop.hf_gpt2 import export_hf_gpt2
from genloom.models.gpt import GPT, preset
from genloom.tokenizers import CharTokenizer


def read_bandwidth_gbs(n_bytes: int = 2**30, repeats: int = 5) -> float:
    """Best-of-N throughput of torch.sum over a 1 GiB fp32 tensor: the rate weights can be streamed."""
    x = torch.ones(n_bytes // 4)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return n_bytes / best / 1e9


def time_ours(model: GPT, prompts: torch.Tensor, new_tokens: int) -> tuple[float, list[list[int]]]:
    cfg = SamplingConfig(max_new_tokens=new_tokens, temperature=0, stop_at_eos=False)
    start = time.perf_counter()
    out = generate_tokens(model, prompts.tolist(), cfg)
    return time.perf_counter() - start, out


def time_hf(model: torch.nn.Module, prompts: torch.Tensor, new_tokens: int) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(  # type: ignore[operator]
            prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, pad_token_id=0,
        )
    return time.perf_counter() - start, out[:, prompts.shape[1] :].tolist()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    set_threads(2)
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    ours = GPT(preset("gpt2")).eval()
    hf_dir = Path(tempfile.mkdtemp(prefix="genloom-gpt2-"))
    export_hf_gpt2(ours, CharTokenizer(["a"]), hf_dir / "gpt2")  # the same weights for both
    hf = GPT2LMHeadModel.from_pretrained(hf_dir / "gpt2", attn_implementation="sdpa").eval()
    weight_gb = ours.num_parameters() * 4 / 1e9
    bandwidth = read_bandwidth_gbs()
    limit = bandwidth / weight_gb  # decoding steps per second if only weight reads counted
    print(f"read bandwidth {bandwidth:.1f} GB/s, fp32 weights {weight_gb:.3f} GB -> <= {limit:.1f} steps/s")

    rows = []
    for batch in (1, 8):
        prompts = torch.randint(0, ours.config.vocab_size, (batch, args.prompt_tokens),
                                generator=torch.Generator().manual_seed(batch))
        time_ours(ours, prompts, 4)  # warm-up: allocator, kernels
        time_hf(hf, prompts, 4)
        ours_s, hf_s = float("inf"), float("inf")
        for _ in range(args.repeats):  # alternate so drift hits both
            t, ours_out = time_ours(ours, prompts, args.new_tokens)
            ours_s = min(ours_s, t)
            t, hf_out = time_hf(hf, prompts, args.new_tokens)
            hf_s = min(hf_s, t)
        same = sum(a == b for a, b in zip(ours_out, hf_out, strict=True))
        n = batch * args.new_tokens
        ours_tps, hf_tps = n / ours_s, n / hf_s
        rows.append([
            str(batch), f"{hf_tps:.1f}", f"{ours_tps:.1f}", f"{ours_tps / hf_tps:.2f}x",
            f"{1000 * ours_s / args.new_tokens:.1f}", f"{ours_tps / (batch * limit):.0%}",
            f"{same}/{batch}",
        ])
    print_table(["batch", "transformers tok/s", "genloom tok/s", "ratio", "genloom ms/step",
                 "of bandwidth limit", "identical greedy rows"], rows)


if __name__ == "__main__":
    main()
