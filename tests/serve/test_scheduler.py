"""The language models' scheduler: a long prompt is read a chunk per pass of its loop, and the running streams get a
token at every pass meanwhile (chunked prefill)."""

from __future__ import annotations

import threading

import pytest
import torch

from genloom.generate import SamplingConfig
from genloom.models.gpt import GPT, GPTConfig
from genloom.serve.metrics import ServerMetrics
from genloom.serve.scheduler import TextJob, TextScheduler, TokenEvent
from genloom.tokenizers import CharTokenizer

LONG_PROMPT = 97  # tokens: 96 to read before its first step


@pytest.fixture(scope="module")
def model_and_tokenizer() -> tuple[GPT, CharTokenizer]:
    torch.manual_seed(0)
    chars = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz ")
    return GPT(GPTConfig(vocab_size=chars.vocab_size, context_length=256, n_layers=2, d_model=32,
                         n_heads=4)).eval(), chars


@pytest.mark.parametrize(("chunk", "passes"), [(8, 12), (128, 1)])
def test_a_long_prompt_delays_a_running_stream_by_one_chunk_a_pass(model_and_tokenizer, chunk, passes):
    """While a 97-token prompt is read 8 tokens a pass (12 passes), the stream already running gets a token at every
    pass; read whole (a chunk of 128), in one pass, the stream waits for the whole prefill."""
    model, chars = model_and_tokenizer
    metrics = ServerMetrics()
    scheduler = TextScheduler("lm", model, chars, max_batch=2, max_queue=4, metrics=metrics, prefill_chunk=chunk)
    order: list[str] = []  # whose token each event was, in the order the scheduler made them
    first_token, long_done = threading.Event(), threading.Event()

    def job(name: str, prompt: str, max_tokens: int, done: threading.Event) -> TextJob:
        def deliver(event: TokenEvent) -> None:  # on the scheduler's thread
            assert event.error is None
            order.append(name)
            first_token.set()
            if event.finish_reason is not None:
                done.set()
        return TextJob(chars.encode(prompt), SamplingConfig(max_new_tokens=max_tokens, temperature=0), None, None,
                       deliver)

    running = job("running", "ab", 150, threading.Event())
    scheduler.start()
    try:
        scheduler.submit([running])
        assert first_token.wait(10)
        with scheduler.wake:  # the scheduler admits under this lock: no pass begins between the mark and the submit
            order.append("submitted")
            scheduler.submit([job("long", ("abcdefghij" * 10)[:LONG_PROMPT], 2, long_done)])
        assert long_done.wait(30)
    finally:
        scheduler.stop()
    meanwhile = order[order.index("submitted") : order.index("long")].count("running")
    # One token a pass while the prompt is read, and perhaps one more from the pass it arrived in.
    assert passes <= meanwhile <= passes + 1
    # Every pass that read prompt tokens is timed: the stream's one, and the long prompt's.
    assert metrics.registry.get_sample_value("genloom_prefill_seconds_count", {"model": "lm"}) == 1 + passes
