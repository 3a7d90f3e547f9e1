"""The compiled decoding step: the same tokens as the eager step, for rows that join, leave and sample; a compiler
that cannot run is one line and leaves the model decoding eagerly."""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

import genloom.generate.compiled as compiled
from genloom.errors import GenloomError
from genloom.generate.batch import DecodeBatch
from genloom.generate.compiled import compile_decoding, decode_step, step_function
from genloom.generate.sampling import SamplingConfig
from genloom.models.gpt import GPT, GPTConfig


def _decode(model: GPT) -> list[list[int]]:
    """Rows of different lengths joining mid-way, one leaving early, greedy and seeded sampling: every token."""
    batch = DecodeBatch(model, capacity=3)
    greedy = SamplingConfig(max_new_tokens=12, temperature=0, stop_at_eos=False)
    seeded = SamplingConfig(max_new_tokens=12, temperature=1.0, seed=7, stop_at_eos=False)
    rows = batch.add([[5, 6, 7, 8], [9]], [greedy, seeded])
    for step in range(14):
        if step == 3:
            rows += batch.add([[1, 2]], [greedy])
        if step == 5:
            batch.remove(rows[0])
        batch.step()
    return [row.generated for row in rows]


def test_compiled_step_decodes_as_the_eager_step() -> None:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=61, context_length=32, n_layers=1, d_model=32, n_heads=2)
    eager = GPT(config).eval()
    fast = copy.deepcopy(eager)
    compile_decoding(fast)  # compiles here, in the warm-up
    assert step_function(fast) is not decode_step and step_function(eager) is decode_step
    graphs = counters["stats"]["unique_graphs"]
    assert _decode(fast) == _decode(eager)
    assert counters["stats"]["unique_graphs"] == graphs, "the warm-up left a shape to compile in the first request"


def test_every_compiled_model_gets_graphs_of_its_own() -> None:
    """torch counts recompiles per code object, up to 8: with one shared step, a second model (six more graphs)
    would go past the limit and decode eagerly without a word."""
    for width in (16, 24):
        before = counters["stats"]["unique_graphs"]
        compile_decoding(GPT(GPTConfig(vocab_size=11, context_length=16, n_layers=1, d_model=width, n_heads=2)))
        assert counters["stats"]["unique_graphs"] >= before + 4


def test_a_compiler_that_fails_is_one_line_and_leaves_decoding_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiler(*args: object) -> torch.Tensor:
        raise RuntimeError("InductorError: CppCompileError: C++ compile error\nthe compiler's output ...")

    monkeypatch.setattr(compiled, "_own_step", lambda: no_compiler)
    model = GPT(GPTConfig(vocab_size=11, context_length=16, n_layers=1, d_model=16, n_heads=2)).eval()
    with pytest.raises(GenloomError, match=r"cannot compile the decoding step .*CppCompileError.*without --compile"):
        compile_decoding(model)
    assert step_function(model) is decode_step
