"""`--engine process`: a language model decoded in a child process answers exactly as the in-process scheduler
does, batches, cancels a gone client's row, keeps its queue limit, and fails cleanly when the child dies; a 16-bit
KV cache (`--kv-cache-dtype`), a compiled step (`--compile`) and the prefill chunk (`--prefill-chunk`) reach the child
and answer as the defaults."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator

import openai
import pytest
import torch
from server_helpers import (
    LONG_CONTEXT,
    LiveServer,
    assert_choices_alike,
    batched_and_solo_texts,
    hang_up,
    open_long_stream,
    timed_passes,
)

from genloom.errors import GenloomError
from genloom.generate.sampling import SamplingConfig
from genloom.serve.engine_process import EngineProcess
from genloom.serve.errors import ApiError
from genloom.serve.metrics import ServerMetrics
from genloom.serve.models import ServeSettings, load_served_models
from genloom.serve.scheduler import QueueFull, TextJob, TextScheduler, TokenEvent


@pytest.fixture(scope="module")
def process_server(checkpoints) -> Iterator[LiveServer]:
    specs = {name: checkpoints[name] for name in ("lm", "chat", "long")}
    with LiveServer(specs, engine="process") as live:
        yield live


def clients(*servers: LiveServer) -> list[openai.OpenAI]:
    return [openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0) for s in servers]


def assert_answers_alike_and_batches_exactly(reference: LiveServer, other: LiveServer, model: str) -> None:
    """`other` samples what `reference` samples (seeded), and its batched answers equal its answers alone."""
    a, b = clients(reference, other)
    kw = {"model": model, "prompt": ["The cat", "A"], "max_tokens": 12, "temperature": 1.0, "seed": 3}
    assert [c.text for c in a.completions.create(**kw).choices] == [c.text for c in b.completions.create(**kw).choices]
    together, solo = batched_and_solo_texts(b, ["The", "a b c d e f", "x"], model=model, max_tokens=20,
                                            temperature=1.0)
    assert together == solo


def test_answers_equal_the_in_process_schedulers(server, process_server):
    here, there = clients(server, process_server)
    assert isinstance(process_server.models["lm"].worker, EngineProcess)
    for kw in ({"temperature": 0}, {"temperature": 1.0, "seed": 7, "top_p": 0.9},
               {"temperature": 0, "logprobs": 2, "echo": True}):
        a = here.completions.create(model="lm", prompt=["The cat", "A"], max_tokens=12, **kw)
        b = there.completions.create(model="lm", prompt=["The cat", "A"], max_tokens=12, **kw)
        assert_choices_alike(a.choices, b.choices)
        assert a.usage == b.usage
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    streamed = [
        "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="chat", messages=messages, max_tokens=20, temperature=0, stream=True) if c.choices)
        for client in (here, there)]
    assert streamed[0] == streamed[1] != ""


def test_the_childs_prefills_and_steps_reach_the_servers_histograms(process_server):
    (client,) = clients(process_server)
    request = functools.partial(client.completions.create, model="lm", prompt="a b", max_tokens=5, temperature=0)
    assert timed_passes(process_server, "lm", request, steps=5) == (1, 5)
    total = process_server.metrics.registry.get_sample_value("genloom_decode_step_seconds_sum", {"model": "lm"})
    assert total is not None and total > 0


def test_batched_output_equals_solo_output(process_server):
    (client,) = clients(process_server)
    together, solo = batched_and_solo_texts(client, ["The", "a b c d e f", "x", "Hello there"], model="long",
                                            max_tokens=30, temperature=1.0)
    assert together == solo


def test_a_client_that_disconnects_frees_its_row(process_server):
    engine = process_server.models["long"].worker
    assert isinstance(engine, EngineProcess)
    generated = process_server.metrics.generated_tokens.labels("long")
    tokens_before = generated._value.get()
    connection = open_long_stream(process_server)
    assert engine.running == 1
    hang_up(connection)
    deadline = time.monotonic() + 10
    while (engine.jobs or engine.running) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not engine.jobs and engine.running == 0  # the child dropped the row and said so
    assert generated._value.get() - tokens_before < LONG_CONTEXT - 8  # it stopped early, it did not run out


def job(prompt: list[int], max_tokens: int, events: list[TokenEvent], done: threading.Event) -> TextJob:
    def deliver(event: TokenEvent) -> None:
        events.append(event)
        if event.finish_reason is not None:
            done.set()
    return TextJob(prompt, SamplingConfig(max_new_tokens=max_tokens, temperature=0), None, None, deliver)


def test_the_queue_limit_holds_and_a_dead_engine_fails_its_requests(checkpoints):
    engine = EngineProcess("long", checkpoints["long"], max_batch=1, max_queue=1, device="cpu", threads=1,
                           metrics=ServerMetrics())
    engine.start()
    try:
        events: list[TokenEvent] = []
        done = threading.Event()
        engine.submit([job([1, 2], LONG_CONTEXT - 8, events, done)])  # runs
        engine.submit([job([3], 4, [], threading.Event())])  # waits
        with pytest.raises(QueueFull):
            engine.submit([job([4], 4, [], threading.Event())])
        deadline = time.monotonic() + 10
        while not events and time.monotonic() < deadline:
            time.sleep(0.005)
        assert events and events[0].error is None  # the long job is decoding
        assert engine._process is not None
        engine._process.kill()  # the engine dies mid-generation
        assert done.wait(10)
        assert events[-1].finish_reason == "error" and "exited" in (events[-1].error or "")
        with pytest.raises(ApiError) as refused:
            engine.submit([job([5], 4, [], threading.Event())])
        assert refused.value.status == 503 and "cannot generate" in refused.value.message
    finally:
        engine.stop()


def test_a_checkpoint_the_child_cannot_load_is_a_one_line_error_at_start(tmp_path):
    engine = EngineProcess("broken", tmp_path / "missing", max_batch=1, max_queue=1, device="cpu", threads=1,
                           metrics=ServerMetrics())
    with pytest.raises(GenloomError, match="could not load") as failed:
        engine.launch()
    assert "\n" not in str(failed.value)


def test_engines_started_before_a_model_that_fails_to_load_are_ended(checkpoints, tmp_path):
    import multiprocessing

    before = set(multiprocessing.active_children())
    with pytest.raises(GenloomError):
        load_served_models({"lm": checkpoints["lm"], "missing": tmp_path / "missing"},
                           ServeSettings(engine="process", device="cpu"), ServerMetrics())
    assert set(multiprocessing.active_children()) <= before  # the lm's engine process is gone


def test_a_16_bit_kv_cache_serves_alike_in_both_engines_and_batches_exactly(checkpoints):
    specs = {"long": checkpoints["long"]}
    with LiveServer(specs, kv_cache_dtype="bfloat16") as here, \
            LiveServer(specs, engine="process", kv_cache_dtype="bfloat16") as there:
        scheduler = here.models["long"].worker
        assert isinstance(scheduler, TextScheduler)
        assert {cache.k.dtype for cache in scheduler.batch.caches} == {torch.bfloat16}
        assert_answers_alike_and_batches_exactly(here, there, "long")


def test_an_unknown_kv_cache_dtype_is_refused_before_loading(checkpoints):
    with pytest.raises(GenloomError, match="unknown KV cache dtype 'int4'"):
        load_served_models({"long": checkpoints["long"]}, ServeSettings(kv_cache_dtype="int4"),  # type: ignore[arg-type]
                           ServerMetrics())


def test_a_compiled_engine_answers_as_the_eager_one_and_batches_exactly(server, checkpoints):
    with LiveServer({"lm": checkpoints["lm"]}, engine="process", compile=True) as there:
        assert there.models["lm"].worker.compiled
        assert_answers_alike_and_batches_exactly(server, there, "lm")


def test_the_prefill_chunk_reaches_the_child_and_answers_alike(server, checkpoints):
    """A 30-token prompt read 4 tokens a pass: 8 passes read it, then 5 steps decode, and the answer is the one the
    default server (which reads it whole) gives."""
    with LiveServer({"long": checkpoints["long"]}, engine="process", prefill_chunk=4) as there:
        kw = {"model": "long", "prompt": "abcdefghij" * 3, "max_tokens": 5, "temperature": 0}
        here_client, there_client = clients(server, there)
        answers: list[str] = []

        def request() -> None:
            answers.append(there_client.completions.create(**kw).choices[0].text)
        assert timed_passes(there, "long", request, steps=5) == (8, 5)
        assert answers == [here_client.completions.create(**kw).choices[0].text]
