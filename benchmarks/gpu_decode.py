"""GPU decoding in bf16 against fp32, measured to find why bf16 is slower (issue 16), in one short run.

GPT-2 small (random weights), 16-token prompts, 128 greedy tokens, batch 1 and 8, through `generate_tokens` (the
one decoding loop: `DecodeBatch`). An earlier H200 run of gpu_check.py gave 237 / 2,752 tok/s in fp32 and 21 / 199
in bf16, before `decoding_head` stopped copying the head to a (d, vocab) layout on GPUs. Four parts, each a table:

1. tokens/s for each dtype and batch, for genloom as it is and with each suspect changed in this script only:
   - `out-in`: every genloom `Linear` weight laid out in memory as nn.Linear's (out, in) (and, on a CPU, the
     output head read from the tied embedding's own (vocab, d) memory, as `decoding_head` now does on a GPU: a
     contiguous (d, vocab) copy has GPT-2's odd vocabulary, 50,257, as its leading dimension, which cuBLAS is known
     to multiply slowly in bf16). genloom keeps (in, out) because CPU BLAS multiplies a few rows by it faster;
     which layout cuBLAS's small-row bf16 kernels prefer is what this row tells;
   - `sdpa math` / `sdpa efficient`: SDPA restricted to one backend (decoding passes a key mask, which rules
     out flash attention);
   - `bf16 kv=fp32`: the bf16 model with an fp32 KV cache (the cache's dtype on its own);
   - `--compile`: the torch.compile'd decoding step (genloom.generate.compiled; inductor's default mode, dynamic
     shapes, no CUDA graphs), compiled before it is timed;
   and transformers' `generate` on the same weights (its dynamic cache; with `--hf-compile`, also its static cache
   with a `torch.compile`d forward, the path it recommends for speed, at batch 1).
2. The kernels of 8 decoding steps at batch 1 (torch.profiler): per dtype, the top kernels by device time, with
   calls and microseconds per step, and per step the host syncs and copies (what launch-bound decoding pays for).
3. Which SDPA backends run the decode shape (q of 1 token against a masked cache), per dtype.
4. With `--trained RUN` (gpu_check.sh passes the tiny model it trained): how many greedy tokens bf16 decoding
   agrees with fp32 on, per prompt (issue 16's target: at least the first 20).

Usage: python benchmarks/gpu_decode.py [--device cuda] [--model gpt2] [--new-tokens 128] [--trained RUN]
       [--hf-compile] [--no-transformers]   (about 5 minutes on an H200 with --hf-compile, estimated, 3 of them
       compiling; the script's own check on a CPU: --device cpu --layers 2 --new-tokens 8 --hf-compile, 3 minutes)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from common import print_table
from torch import Tensor

import genloom.generate.batch as batch_module
import genloom.generate.compiled as compiled_module
from genloom.generate import SamplingConfig, generate_tokens
from genloom.generate.batch import DecodeBatch
from genloom.generate.compiled import compile_decoding
from genloom.interop.hf_gpt2 import export_hf_gpt2
from genloom.models.gpt import GPT, preset
from genloom.nn.layers import Linear
from genloom.registry import load_pretrained
from genloom.tokenizers import CharTokenizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PROMPT_TOKENS = 16
PROFILED_STEPS = 8


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def prompts_for(model: GPT, batch: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(batch)
    return torch.randint(0, model.config.vocab_size, (batch, PROMPT_TOKENS), generator=g).tolist()


def tokens_per_second(model: GPT, batch: int, new_tokens: int, repeats: int = 2) -> float:
    """Best of `repeats` timed greedy runs after one warm-up run."""
    device = model.token_embedding.weight.device
    prompts = prompts_for(model, batch)
    generate_tokens(model, prompts, SamplingConfig(max_new_tokens=4, temperature=0))
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        generate_tokens(model, prompts, SamplingConfig(max_new_tokens=new_tokens, temperature=0, stop_at_eos=False))
        sync(device)
        best = min(best, time.perf_counter() - start)
    return batch * new_tokens / best


# --- the suspects, each applied to the model (or the process) for one measurement and undone after ---------------

@contextlib.contextmanager
def out_in_layout(model: GPT) -> Iterator[None]:
    """Every Linear weight stored as (out, in) in memory (same values and logical (in, out) shape), and the head
    read as a view of the embedding."""
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    saved = [m.weight.data for m in linears]
    for m in linears:
        m.weight.data = m.weight.data.t().contiguous().t()  # logical (in, out), strides (1, in)
    original_head = batch_module.decoding_head
    batch_module.decoding_head = lambda gpt: gpt.lm_head.weight.detach().t()  # (d, vocab) view, strides (1, d)
    try:
        yield
    finally:
        batch_module.decoding_head = original_head
        for m, data in zip(linears, saved, strict=True):
            m.weight.data = data


@contextlib.contextmanager
def sdpa_backend(name: str) -> Iterator[None]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[name]
    with sdpa_kernel([backend]):
        yield


@contextlib.contextmanager
def fp32_kv_cache() -> Iterator[None]:
    original = DecodeBatch.__init__

    def init(self: DecodeBatch, *args: object, **kwargs: object) -> None:
        kwargs["kv_dtype"] = torch.float32
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    DecodeBatch.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        DecodeBatch.__init__ = original  # type: ignore[method-assign]


@contextlib.contextmanager
def compiled_step(model: GPT) -> Iterator[None]:
    """The `--compile` decoding step (compiled here, outside the timing), for this measurement only."""
    compile_decoding(model)
    try:
        yield
    finally:
        compiled_module._COMPILED.pop(model, None)


def measured(run: Callable[[], float]) -> str:
    """A measurement's tokens/s, or why it could not run (a backend that refuses the shape, say)."""
    try:
        return f"{run():,.0f}"
    except Exception as e:  # report and go on: one failing variant must not cost the run
        return f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"


def speed_table(model: GPT, new_tokens: int, hf_dir: Path | None, hf_compile: bool) -> None:
    device = model.token_embedding.weight.device
    variants: list[tuple[str, Callable[[GPT], contextlib.AbstractContextManager[None]], tuple[str, ...]]] = [
        ("as is", lambda m: contextlib.nullcontext(), ("fp32", "bf16")),
        ("out-in", out_in_layout, ("fp32", "bf16")),
        ("bf16 kv=fp32", lambda m: fp32_kv_cache(), ("bf16",)),
        ("--compile", compiled_step, ("fp32", "bf16")),
    ]
    if device.type == "cuda":  # fp32 decoding is fast already: only bf16 is timed with one backend forced
        variants += [(f"sdpa {b}", lambda m, b=b: sdpa_backend(b), ("bf16",)) for b in ("math", "efficient")]
    rows = []
    for dtype_name, dtype in DTYPES.items():
        model.to(dtype)
        for name, make, dtypes in variants:
            if dtype_name not in dtypes:
                continue
            def run_both(make: Callable = make) -> list[str]:  # one context for both batches: one compile
                with make(model):
                    return [measured(functools.partial(tokens_per_second, model, batch, new_tokens))
                            for batch in (1, 8)]
            try:
                cells = run_both()
            except Exception as e:  # the variant's set-up failed (a compiler that cannot run, say)
                cells = [f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"] * 2
            rows.append([f"genloom {name}", dtype_name, *cells])
        if hf_dir is not None:
            for static in (False, True) if hf_compile else (False,):
                label = "transformers static cache + compile" if static else "transformers"
                # A static cache compiles for each batch size (a minute or more each): batch 1 only, the
                # launch-bound case compilation is for.
                cells = [measured(functools.partial(hf_tokens_per_second, hf_dir, dtype, device, batch, new_tokens,
                                                    static)) if batch == 1 or not static else "-"
                         for batch in (1, 8)]
                rows.append([label, dtype_name, *cells])
    model.float()
    print_table(["decoder", "dtype", "batch 1 tok/s", "batch 8 tok/s"], rows)


_HF_MODELS: dict[tuple[torch.dtype, bool], torch.nn.Module] = {}


def hf_tokens_per_second(hf_dir: Path, dtype: torch.dtype, device: torch.device, batch: int, new_tokens: int,
                         static: bool) -> float:
    from transformers import GPT2LMHeadModel

    key = (dtype, static)
    if key not in _HF_MODELS:
        hf = GPT2LMHeadModel.from_pretrained(hf_dir, attn_implementation="sdpa", dtype=dtype).to(device).eval()
        if static:
            hf.generation_config.cache_implementation = "static"
            hf.forward = torch.compile(hf.forward, mode="reduce-overhead", fullgraph=True)  # type: ignore[method-assign]
        _HF_MODELS.clear()  # one model on the device at a time
        _HF_MODELS[key] = hf
    hf = _HF_MODELS[key]
    prompts = torch.tensor(prompts_for_vocab(hf.config.vocab_size, batch), device=device)

    def generate(n: int) -> None:
        with torch.inference_mode():
            hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n,  # type: ignore[operator]
                        min_new_tokens=n, do_sample=False, pad_token_id=0)

    generate(new_tokens)  # warm-up at full length: a static cache compiles for its shapes
    best = float("inf")
    for _ in range(2):
        sync(device)
        start = time.perf_counter()
        generate(new_tokens)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return batch * new_tokens / best


def prompts_for_vocab(vocab: int, batch: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(batch)
    return torch.randint(0, vocab, (batch, PROMPT_TOKENS), generator=g).tolist()


# --- where the time goes --------------------------------------------------------------------------------------------

def kernel_table(model: GPT) -> None:
    """The top kernels (or CPU ops, on a CPU) of PROFILED_STEPS batch-1 decoding steps, per dtype."""
    from torch.profiler import ProfilerActivity, profile

    device = model.token_embedding.weight.device
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if on_gpu else [ProfilerActivity.CPU]
    for dtype_name, dtype in DTYPES.items():
        model.to(dtype)
        engine = DecodeBatch(model, capacity=1)
        engine.add(prompts_for(model, 1), [SamplingConfig(max_new_tokens=64, temperature=0, stop_at_eos=False)])
        for _ in range(4):  # warm-up steps
            engine.step()
        sync(device)
        with profile(activities=activities) as prof:
            for _ in range(PROFILED_STEPS):
                engine.step()
            sync(device)
        events = prof.key_averages()

        def self_time(e: object) -> float:  # microseconds; the attribute's name changed across torch versions
            if on_gpu:
                return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))
            return float(getattr(e, "self_cpu_time_total", 0.0))

        timed = sorted((e for e in events if self_time(e) > 0 and (not on_gpu or _is_kernel(e))),
                       key=self_time, reverse=True)
        total = sum(self_time(e) for e in timed)
        print(f"\n{dtype_name}, batch 1: {total / PROFILED_STEPS:,.0f} us of {'kernels' if on_gpu else 'CPU ops'} "
              f"a step")
        rows = [[e.key[:90], f"{e.count / PROFILED_STEPS:.1f}", f"{self_time(e) / PROFILED_STEPS:,.1f}",
                 f"{self_time(e) / total:.0%}"] for e in timed[:12]]
        print_table(["kernel" if on_gpu else "op", "calls a step", "us a step", "share"], rows)
        counted = {e.key: e.count for e in events}
        watch = ["cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync", "aten::_to_copy", "aten::copy_",
                 "aten::item", "aten::_local_scalar_dense", "cudaLaunchKernel"]
        print("per step: " + ", ".join(f"{name} {counted.get(name, 0) / PROFILED_STEPS:.1f}" for name in watch))
    model.float()


def _is_kernel(event: object) -> bool:
    from torch.autograd import DeviceType

    return getattr(event, "device_type", None) == DeviceType.CUDA


def sdpa_backend_table(model: GPT) -> None:
    """Which SDPA backends run one decode step's attention (1 query token, a masked 48-column cache), batch 8."""
    device = model.token_embedding.weight.device
    if device.type != "cuda":
        print("\n(SDPA backends: CUDA only)")
        return
    cfg = model.config
    heads, head_dim, width = cfg.n_heads, cfg.d_model // cfg.n_heads, 48
    rows = []
    for dtype_name, dtype in DTYPES.items():
        q = torch.randn(8, heads, 1, head_dim, device=device, dtype=dtype)
        k, v = (torch.randn(8, heads, width, head_dim, device=device, dtype=dtype) for _ in range(2))
        mask = torch.arange(width, device=device)[None, None, None, :] < torch.arange(8, device=device).add(40)[
            :, None, None, None]  # (8, 1, 1, width): rows of different lengths
        cells = [measured(functools.partial(sdpa_microseconds, q, k, v, mask, name))
                 for name in ("flash", "efficient", "cudnn", "math")]
        rows.append([dtype_name, *cells])
    print_table(["dtype", "flash us", "efficient us", "cudnn us", "math us"], rows)


def sdpa_microseconds(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, backend: str) -> float:
    """One attention call's time on the GPU with SDPA restricted to `backend` (mean of 100 after one)."""
    import torch.nn.functional as F

    device = q.device
    with sdpa_backend(backend):
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        sync(device)
        start = time.perf_counter()
        for _ in range(100):
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        sync(device)
    return (time.perf_counter() - start) / 100 * 1e6


def agreement_table(run: Path, device: torch.device) -> None:
    """Greedy tokens bf16 decoding agrees with fp32 on, for a trained model, per prompt."""
    loaded = load_pretrained(run)
    model, tokenizer = loaded.model, loaded.tokenizer
    assert isinstance(model, GPT) and tokenizer is not None
    model.to(device)
    texts = ["The for statement", "def main():", "Built-in functions", "A class is", "The import system",
             "Exceptions are", "with open(", "lambda"]
    prompts = [tokenizer.encode(t) for t in texts]
    cfg = SamplingConfig(max_new_tokens=64, temperature=0, stop_at_eos=False)
    fp32 = generate_tokens(model.float(), prompts, cfg)
    bf16 = generate_tokens(model.to(torch.bfloat16), prompts, cfg)
    rows = []
    for text, a, b in zip(texts, fp32, bf16, strict=True):
        agree = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
        rows.append([repr(text), str(agree)])
    print(f"\ngreedy agreement, bf16 against fp32, {run} (64 tokens; target: >= 20 on every prompt)")
    print_table(["prompt", "tokens equal before the first difference"], rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="gpt2", help="a GPT preset (random weights)")
    parser.add_argument("--layers", type=int, help="override the preset's layers (the script's own CPU check)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--trained", type=Path, help="a trained genloom LM run, for the bf16/fp32 agreement table")
    parser.add_argument("--hf-compile", action="store_true",
                        help="also time transformers' static cache with a compiled forward (compiles for minutes)")
    parser.add_argument("--no-transformers", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(2)
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    torch.manual_seed(0)
    overrides = {} if args.layers is None else {"n_layers": args.layers}
    model = GPT(preset(args.model, **overrides)).to(device).eval()
    hf_dir = None
    if not args.no_transformers:
        hf_dir = Path(tempfile.mkdtemp(prefix="genloom-gpu-decode-")) / "gpt2"
        export_hf_gpt2(model, CharTokenizer(["a"]), hf_dir)  # the same weights for both
    print(f"\n{args.model}, {PROMPT_TOKENS}-token prompts, {args.new_tokens} greedy tokens (best of 2 runs)")
    speed_table(model, args.new_tokens, hf_dir, args.hf_compile)
    kernel_table(model)
    sdpa_backend_table(model)
    if args.trained is not None:
        agreement_table(args.trained, device)


if __name__ == "__main__":
    main()
