"""Iteration-level batching through HTTP: streams interleave, batched output equals solo output, a client that
disconnects frees its row."""

from __future__ import annotations

import time

import openai
import pytest
from server_helpers import LONG_CONTEXT, batched_and_solo_texts, hang_up, open_long_stream


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_two_streams_interleave(client):
    """A short request sent while a long one streams finishes first: it joined the running batch instead of
    waiting for the long one to end."""
    long_stream = client.completions.create(model="long", prompt="a", max_tokens=LONG_CONTEXT - 8, temperature=0,
                                            stream=True)
    chunks = iter(long_stream)
    next(chunks)  # the long request is decoding
    short = client.completions.create(model="long", prompt="b", max_tokens=3, temperature=0)
    short_done = time.perf_counter()
    arrivals = [time.perf_counter() for _ in chunks]
    assert short.choices[0].finish_reason == "length"
    assert sum(t > short_done for t in arrivals) > 10  # the long stream went on after the short one ended


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batched_output_equals_solo_output(client, temperature):
    prompts = ["The", "a b c d e f", "x", "Hello there", "1 2", "zz", "q", "long prompt here"]
    together, solo = batched_and_solo_texts(client, prompts, model="long", max_tokens=40, temperature=temperature,
                                            top_p=0.9)
    assert together == solo


def test_a_client_that_disconnects_frees_its_row(server):
    scheduler = server.models["long"].worker
    generated = server.metrics.generated_tokens.labels("long")
    tokens_before = generated._value.get()
    connection = open_long_stream(server)
    before = len(scheduler.batch.rows)
    hang_up(connection)
    deadline = time.monotonic() + 10
    while scheduler.batch.rows and time.monotonic() < deadline:
        time.sleep(0.005)
    assert before == 1 and not scheduler.batch.rows
    assert not scheduler.live  # the job is gone too, not only its row
    assert generated._value.get() - tokens_before < LONG_CONTEXT - 8  # it stopped early, it did not run out
