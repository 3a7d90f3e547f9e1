"""A `torch.compile`d decoding step: the one forward every `DecodeBatch` step runs, fused by inductor.

A decoding step of a small model is mostly per-op overhead: a 4-layer, d_model 128 GPT runs ~200 small ops a
token, each dispatched from Python. Compiled, the same step runs 1.4-1.6x as fast on a 2-core CPU at 1 and at 16
rows (benchmarks/decode_compile.py), for a compile of about a minute when the model is loaded (inductor's cache on
disk makes later starts quicker). On a GPU the same fusion cuts kernel launches, which bound batch-1 decoding
there (not measured yet); CUDA graphs, which need fixed shapes, are not used yet.

    compile_decoding(model)   # every DecodeBatch over `model` from now on steps through the compiled forward

Shapes are dynamic (rows and cache width change every step), so a few graphs compiled when the model is loaded
serve every batch: torch specialises sizes 0 and 1, so the warm-up steps through one and two rows, a cache width
of one and more, and a capacity of one and more (six graphs), and no request later waits for a compile. Only the
step is compiled; prefill and sampling stay eager.
"""

from __future__ import annotations

import itertools
import types
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from genloom.errors import GenloomError, first_line
from genloom.models.gpt import GPT

StepFunction = Callable[[GPT, Tensor, Tensor, Tensor, Sequence[Any], Tensor], Tensor]

_COMPILED: weakref.WeakKeyDictionary[GPT, StepFunction] = weakref.WeakKeyDictionary()
_compiles = itertools.count()


def decode_step(model: GPT, tokens: Tensor, positions: Tensor, key_valid: Tensor, caches: Sequence[Any],
                head: Tensor) -> Tensor:
    """tokens (n, 1) at positions (n, 1), keys valid (n, width), one cache per layer (DecodeBatch's slot caches)
    -> next-token logits (n, vocab)."""
    hidden = model.hidden_states(tokens, positions=positions, attention_mask=key_valid,
                                 kv_caches=list(caches), last_only=True)  # the slot caches quack as KVCache
    return hidden[:, -1] @ head


def step_function(model: GPT) -> StepFunction:
    """The step a DecodeBatch over `model` runs: compiled after `compile_decoding(model)`, else eager."""
    return _COMPILED.get(model, decode_step)


def _own_step() -> StepFunction:
    """`decode_step` compiled with a code object of its own. torch keeps compiled graphs, and counts recompiles
    against a limit of 8, per code object: one shared by every model would fill with the first model's six graphs,
    and a second model would then decode eagerly without a word."""
    number = next(_compiles)
    code = decode_step.__code__.replace(co_name=f"decode_step_{number}", co_qualname=f"decode_step_{number}")
    step = types.FunctionType(code, decode_step.__globals__, code.co_name)
    return _without_duck_shapes(torch.compile(step, dynamic=True))


def _without_duck_shapes(step: StepFunction) -> StepFunction:
    """`step`, compiled with every size its own symbol. By default torch gives sizes that happen to be equal one
    symbol, so a warm-up batch whose capacity equals its row count (2 and 2) compiles a graph for that capacity
    only, and a batch of 16 rows compiles again in the middle of a request."""
    try:
        from torch.fx.experimental import _config as shape_config
    except ImportError:  # another torch: the same tokens, with a recompile or two
        return step
    if not hasattr(shape_config, "use_duck_shape"):
        return step
    patch: Callable[..., Any] = getattr(shape_config, "patch")  # noqa: B009 (set by torch's install_config_module)

    def run(*args: Any) -> Tensor:
        with patch(use_duck_shape=False):
            return step(*args)

    return run


def compile_decoding(model: GPT, warm_up: bool = True, kv_dtype: torch.dtype | None = None) -> None:
    """Decode `model` with the compiled step from now on, compiling it now (`warm_up`, for batches whose KV cache
    is in `kv_dtype`) rather than in the first request. A compiler that cannot run (inductor needs a C++ compiler
    on a CPU) is a one-line GenloomError, and the model decodes eagerly."""
    _COMPILED[model] = _own_step()
    if not warm_up:
        return
    from genloom.generate.batch import DecodeBatch
    from genloom.generate.sampling import SamplingConfig

    greedy = SamplingConfig(max_new_tokens=3, temperature=0, stop_at_eos=False)
    columns = min(8, model.config.context_length)

    def batch(capacity: int, rows: int) -> DecodeBatch:
        engine = DecodeBatch(model, capacity=capacity, max_len=columns, kv_dtype=kv_dtype)
        engine.add([[0]] * rows, [greedy] * rows)
        return engine

    try:
        # Sizes 0 and 1 are specialised, so each of these is a graph of its own: 1 or more rows, a cache of width
        # 1 or more, a capacity of 1 (`generate` with one prompt) or more.
        two = batch(2, 1)
        two.step()  # 1 row, width 1
        two.step()  # 1 row, wider
        two.add([[0]], [greedy])
        two.step()  # 2 rows
        batch(2, 2).step()  # 2 rows, width 1
        one = batch(1, 1)
        one.step()  # capacity 1, width 1
        one.step()  # capacity 1, wider
    except Exception as e:
        _COMPILED.pop(model, None)
        raise GenloomError(f"cannot compile the decoding step ({type(e).__name__}: {first_line(e)[:200]}); "
                           f"decode without --compile, or install a C++ compiler for torch.compile on a CPU"
                           ) from e
