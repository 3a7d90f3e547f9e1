"""Iteration-level batching through HTTP: streams interleave, batched output equals solo output, a client that
disconnects frees its row; an image request (either method) or a translation joins the running steps, and a
cancelled one leaves them."""

from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import openai
import pytest
from PIL import Image
from server_helpers import LONG_CONTEXT, batched_and_solo_texts, hang_up, http, open_long_stream

from genloom.generate.diffuse import DiffusionSampling, diffuse
from genloom.generate.imagine import imagine
from genloom.generate.translate import translate
from genloom.serve.models import ImageJob, TranslationJob
from genloom.serve.scheduler import CallJob


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


def _wait_for(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_a_diffusion_request_joins_the_running_passes(server, client):
    """A 4-step request sent while a 250-step one samples ends first, with the images it makes alone: it shared the
    long one's denoiser passes instead of waiting for its call to end (a whole call would have made it wait)."""
    scheduler = server.models["diffusion"].worker
    long_reply: list[tuple[int, object]] = []
    long_request = threading.Thread(target=lambda: long_reply.append(http(
        "POST", server.url + "/v1/images/generations",
        {"model": "diffusion", "prompt": "a blue square", "steps": 250, "seed": 0, "guidance_scale": 2.0})[::2]))
    long_request.start()
    _wait_for(lambda: any(group.step > 0 for group in scheduler.live))
    short = client.images.generate(model="diffusion", prompt="a red circle", n=2,
                                   extra_body={"seed": 7, "steps": 4, "guidance_scale": 3.0})
    (long_group,) = scheduler.live  # still sampling
    assert long_group.step < 250
    long_request.join(timeout=60)
    assert long_reply[0][0] == 200
    loaded = server.models["diffusion"].loaded
    images, _ = diffuse(loaded.model, loaded.tokenizer, loaded.vae, ["a red circle"], n_images=2, seed=7,
                        guidance_scale=3.0, sampling=DiffusionSampling(steps=4), negative_prompts=[""],
                        progress=False)
    for data, image in zip(short.data, images, strict=True):
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(data.b64_json))).convert("RGB"))
        assert np.abs(pixels.astype(int) - image).max() <= 1  # the same image, to rounding of batched products


@pytest.mark.parametrize(("model", "job"), [
    ("diffusion", ImageJob("a red circle", 2, 0, 2.0, "", 1.0, steps=250)),  # 250 denoiser passes
    ("images", ImageJob("a red circle", 2, 0, 2.0, "", 1.0)),  # 16 image tokens
    ("translate", TranslationJob(["a red circle", "a cyan triangle"], "", 4)),  # random weights: to the length limit
])
def test_a_cancelled_request_leaves_the_steps(server, monkeypatch, model, job):
    scheduler = server.models[model].worker
    step = scheduler.batch.step
    monkeypatch.setattr(scheduler.batch, "step", lambda: time.sleep(0.01) or step())  # cancelled well before the end
    delivered: list[object] = []
    call = CallJob(None, 2, job, lambda result, error: delivered.append(result))
    scheduler.submit(call)
    _wait_for(lambda: len(scheduler.live) == 1)
    (group,) = scheduler.live
    call.cancelled = True  # what the HTTP handler does when its client is gone
    _wait_for(lambda: scheduler.batch.rows == 0)
    assert not scheduler.batch.groups and not scheduler.live and not delivered
    assert not group.done  # it left at once; it did not run out its steps


def _slow_steps(scheduler, monkeypatch) -> list[int]:
    """Make each of the scheduler's steps 20 ms slower, so a second request surely arrives while the first runs;
    returns the list the rows of every step are recorded in."""
    rows: list[int] = []
    step = scheduler.batch.step

    def slow_step():
        rows.append(scheduler.batch.rows)
        time.sleep(0.02)
        return step()

    monkeypatch.setattr(scheduler.batch, "step", slow_step)
    return rows


def _post_in_background(url: str, body: dict) -> tuple[threading.Thread, list[tuple[int, object]]]:
    """POST `body` on a thread of its own; the list gets (status, reply) when it is answered."""
    reply: list[tuple[int, object]] = []
    thread = threading.Thread(target=lambda: reply.append(http("POST", url, body)[::2]))
    thread.start()
    return thread, reply


def test_token_image_requests_with_other_settings_share_the_running_steps(server, client, monkeypatch):
    """A token-method request sent while another samples joins its steps, though its guidance and temperature
    differ (a whole call could not have shared them), and draws the images `imagine` draws alone."""
    batch_rows = _slow_steps(server.models["images"].worker, monkeypatch)
    first, first_reply = _post_in_background(server.url + "/v1/images/generations", {
        "model": "images", "prompt": "a blue square", "n": 2, "seed": 0, "guidance_scale": 2.0})
    _wait_for(lambda: len(batch_rows) >= 2)
    second = client.images.generate(model="images", prompt="a red circle", n=2,  # 2 + 2: the test server's batch
                                    extra_body={"seed": 7, "guidance_scale": 1.0, "temperature": 0.7,
                                                "negative_prompt": "a green triangle"})
    first.join(timeout=60)
    assert first_reply[0][0] == 200
    assert 2 + 2 in batch_rows  # the two requests' images were sampled in the same steps
    loaded = server.models["images"].loaded
    images, _ = imagine(loaded.model, loaded.tokenizer, loaded.vq, ["a red circle"], n_images=2, seed=7,
                        temperature=0.7, guidance_scale=1.0, negative_prompts=["a green triangle"], progress=False)
    for data, image in zip(second.data, images, strict=True):
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(data.b64_json))).convert("RGB"))
        assert np.array_equal(pixels, image)


def test_translations_with_other_beam_sizes_share_the_running_steps(server, monkeypatch):
    """A greedy translation sent while a beam search runs joins its steps (a whole call could not have shared them:
    their beam sizes differ), and each request gets the texts `translate` gives it alone."""
    served = server.models["translate"]
    batch_rows = _slow_steps(served.worker, monkeypatch)
    first_texts, second_texts = ["a red circle", "a blue square above a green triangle"], ["a cyan triangle"]
    first, first_reply = _post_in_background(server.url + "/v1/translations/text",
                                             {"model": "translate", "text": first_texts, "beam_size": 4})
    _wait_for(lambda: len(batch_rows) >= 2)
    status, _, second = http("POST", server.url + "/v1/translations/text",
                             {"model": "translate", "text": second_texts, "beam_size": 1})
    first.join(timeout=60)
    assert status == 200 and first_reply[0][0] == 200
    assert 2 + 1 in batch_rows  # the two requests' texts were decoded in the same steps
    expected = translate(served.model, served.tokenizer, first_texts, beam_size=4)
    assert [t["text"] for t in first_reply[0][1]["translations"]] == expected
    assert [t["text"] for t in second["translations"]] == translate(served.model, served.tokenizer, second_texts,
                                                                      beam_size=1)

