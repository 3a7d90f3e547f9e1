"""The HTTP API through the official `openai` client against a live server: results equal the library's."""

from __future__ import annotations

import base64
import functools
import io
import json
import shutil

import numpy as np
import openai
import pytest
import torch
from chat_helpers import make_calculator_chat
from cli_helpers import one_error_line, run_cli
from PIL import Image
from server_helpers import LiveServer, assert_choices_alike, clip_of, http, timed_passes

from genloom.checkpoint import save_checkpoint
from genloom.generate import SamplingConfig, generate
from genloom.generate.chat import ChatSession
from genloom.generate.diffuse import DiffusionSampling, diffuse
from genloom.generate.image_io import read_png_metadata
from genloom.generate.imagine import imagine
from genloom.generate.rerank import imagine_best_of
from genloom.generate.translate import translate
from genloom.models.vqvae import VQVAE, VQConfig
from genloom.registry import load_clip_model, load_image_generator, load_text_to_image_model
from genloom.tokenizers.chat_tools import CALC_END, OUTPUT_END, OUTPUT_START


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_models_lists_every_model_with_family_and_context(client):
    listed = {m.id: m.model_dump() for m in client.models.list().data}
    assert set(listed) == {"lm", "chat", "images", "diffusion", "translate", "long"}
    assert listed["lm"]["family"] == "gpt" and listed["lm"]["context_length"] == 96 and not listed["lm"]["chat"]
    assert listed["chat"]["chat"] and listed["images"]["kind"] == "images" and listed["images"]["size"] == "8x8"
    assert listed["translate"]["family"] == "seq2seq"
    assert listed["images"]["method"] == "tokens" and listed["diffusion"]["method"] == "diffusion"
    assert listed["diffusion"]["family"] == "dit" and listed["diffusion"]["steps"] == 20
    assert client.models.retrieve("chat").id == "chat"


def test_completion_is_the_librarys_generation(client, server):
    served = server.models["lm"]
    response = client.completions.create(model="lm", prompt=["The cat", "A"], max_tokens=12, temperature=0)
    expected = generate(served.model, served.tokenizer, ["The cat", "A"], SamplingConfig(max_new_tokens=12,
                                                                                           temperature=0))
    assert [c.text for c in response.choices] == [e.text for e in expected]
    assert [c.finish_reason for c in response.choices] == ["length", "length"]
    assert response.usage.prompt_tokens == 8 and response.usage.completion_tokens == 24


def test_logprobs_and_echo_score_the_prompt(client, server):
    served = server.models["lm"]
    response = client.completions.create(model="lm", prompt="Hello", max_tokens=4, temperature=0, logprobs=3,
                                         echo=True)
    choice = response.choices[0]
    choice_text = choice.text
    lp = choice.logprobs
    assert choice_text.startswith("Hello") and "".join(lp.tokens) == choice_text
    assert lp.token_logprobs[0] is None and len(lp.tokens) == 9
    ids = served.tokenizer.encode(choice_text)
    with torch.no_grad():
        logp = torch.log_softmax(served.model(torch.tensor([ids]))[0], dim=-1)
    expected = [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    assert all(len(top) == 3 for top in lp.top_logprobs[1:])
    assert lp.text_offset == [sum(map(len, lp.tokens[:i])) for i in range(len(lp.tokens))]
    scored = client.completions.create(model="lm", prompt="Hello", max_tokens=0, echo=True, logprobs=0)
    assert scored.choices[0].text == "Hello" and scored.choices[0].logprobs.token_logprobs[1:] == pytest.approx(
        expected[:4], abs=1e-4)


def test_n_choices_sample_with_seed_plus_index(client):
    kw = {"model": "lm", "prompt": "Once", "max_tokens": 10, "temperature": 1.0, "top_p": 0.9}
    both = client.completions.create(n=2, seed=11, **kw)
    assert both.choices[0].text != both.choices[1].text
    assert client.completions.create(n=2, seed=11, **kw).choices[1].text == both.choices[1].text  # reproducible
    assert client.completions.create(n=1, seed=12, **kw).choices[0].text == both.choices[1].text


def test_stop_strings_cut_the_text_and_penalties_change_it(client):
    free = client.completions.create(model="lm", prompt="ab", max_tokens=20, temperature=0).choices[0].text
    stop = free[4:6]
    cut = client.completions.create(model="lm", prompt="ab", max_tokens=20, temperature=0, stop=[stop]).choices[0]
    assert cut.text == free[: free.index(stop)] and cut.finish_reason == "stop"
    varied = client.completions.create(model="lm", prompt="ab", max_tokens=20, temperature=0, frequency_penalty=2.0)
    assert len(set(varied.choices[0].text)) > len(set(free))


def test_token_array_prompts_answer_as_their_text(client, server):
    tokenizer = server.models["lm"].tokenizer
    kw = {"model": "lm", "max_tokens": 8, "temperature": 0, "logprobs": 1, "echo": True}
    as_text = client.completions.create(prompt=["The cat", "A"], **kw)
    ids = [tokenizer.encode("The cat"), tokenizer.encode("A")]
    as_ids = client.completions.create(prompt=ids, **kw)
    assert_choices_alike(as_ids.choices, as_text.choices)
    one = client.completions.create(prompt=ids[0], **kw)  # a single token array is one prompt
    assert_choices_alike(one.choices, as_text.choices[:1])
    assert as_ids.usage == as_text.usage


def test_tokenize_gives_the_ids_completions_and_chat_read(client, server):
    tokenizer = server.models["lm"].tokenizer
    status, _, tokenized = http("POST", server.url + "/tokenize", {"model": "lm", "prompt": "The cat"})
    assert status == 200 and tokenized == {"count": 7, "max_model_len": 96, "tokens": tokenizer.encode("The cat")}
    back = http("POST", server.url + "/detokenize", {"model": "lm", "tokens": tokenized["tokens"]})[2]
    assert back == {"prompt": "The cat"}
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    chat_ids = http("POST", server.url + "/tokenize", {"model": "chat", "messages": messages})[2]
    answered = client.chat.completions.create(model="chat", messages=messages, max_tokens=2, temperature=0)
    assert chat_ids["count"] == answered.usage.prompt_tokens
    without = http("POST", server.url + "/tokenize", {"model": "chat", "messages": messages,
                                                        "add_generation_prompt": False})[2]
    assert chat_ids["tokens"][: without["count"]] == without["tokens"] and without["count"] < chat_ids["count"]


def test_logit_bias_bans_and_forces_tokens(client, server):
    tokenizer = server.models["lm"].tokenizer
    kw = {"model": "lm", "prompt": "The", "max_tokens": 12, "logprobs": 0}
    free = client.completions.create(temperature=0, **kw).choices[0]
    first = tokenizer.encode(free.text)[0]
    banned = client.completions.create(temperature=0, logit_bias={str(first): -100}, **kw).choices[0]
    assert tokenizer.encode(banned.text)[0] != first and first not in tokenizer.encode(banned.text)
    forced_id = tokenizer.encode("z")[0]
    forced = client.completions.create(temperature=1.0, seed=5, logit_bias={str(forced_id): 100}, **kw).choices[0]
    assert forced.text == "z" * 12
    # The log-probabilities reported are the model's, before the bias (as OpenAI and vLLM report them).
    assert forced.logprobs.token_logprobs[0] < -0.5
    chat = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                                          temperature=0, logit_bias={str(forced_id): 100})
    assert chat.choices[0].message.content == "z" * 6


def test_best_of_returns_the_candidates_of_highest_total_logprob(client):
    kw = {"model": "lm", "prompt": ["The", "A b"], "max_tokens": 8, "temperature": 1.0, "seed": 21}
    candidates = client.completions.create(n=4, logprobs=0, **kw)
    best = client.completions.create(n=2, best_of=4, **kw)
    for p in range(2):
        mine = candidates.choices[4 * p : 4 * p + 4]
        ranked = sorted(mine, key=lambda c: -sum(c.logprobs.token_logprobs))
        assert [c.text for c in best.choices[2 * p : 2 * p + 2]] == [c.text for c in ranked[:2]]
    assert [c.index for c in best.choices] == [0, 1, 2, 3] and best.choices[0].logprobs is None
    assert best.usage.completion_tokens == candidates.usage.completion_tokens  # every candidate's tokens count
    echoed = client.completions.create(n=2, best_of=4, echo=True, logprobs=0, **kw)  # each prompt scored once
    assert [c.text for c in echoed.choices] == [p + c.text for p, c in zip(["The"] * 2 + ["A b"] * 2, best.choices,
                                                                           strict=True)]
    first = echoed.choices[0].logprobs
    assert first.tokens[:3] == ["T", "h", "e"] and first.token_logprobs[0] is None


def test_chat_is_the_chat_sessions_reply_and_streams_the_same_text(client, server):
    served = server.models["chat"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    response = client.chat.completions.create(model="chat", messages=messages, max_tokens=20, temperature=0)
    session = ChatSession(served.model, served.tokenizer, SamplingConfig(max_new_tokens=20, temperature=0),
                          system="Be brief.")
    assert response.choices[0].message.content == session.reply("What is 2 + 2?").text
    assert response.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model="chat", messages=messages, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == response.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        response.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == response.usage.completion_tokens


def test_chat_logprobs(client):
    response = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    content = response.choices[0].logprobs.content
    assert "".join(t.token for t in content) == response.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in content)


def test_completion_streams_chunks_ending_with_done(server):
    import urllib.request

    body = json.dumps({"model": "lm", "prompt": "ab", "max_tokens": 6, "temperature": 0, "stream": True}).encode()
    request = urllib.request.Request(server.url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_images_are_pngs_with_their_parameters_and_per_image_seeds(client, server):
    response = client.images.generate(model="images", prompt="a red circle", n=2, response_format="b64_json",
                                      extra_body={"seed": 5, "guidance_scale": 2.0})
    pngs = [base64.b64decode(d.b64_json) for d in response.data]
    first = Image.open(io.BytesIO(pngs[0]))
    assert first.size == (8, 8) and first.format == "PNG"
    record = read_png_metadata(io.BytesIO(pngs[1]))
    assert record["prompt"] == "a red circle"
    assert record["parameters"]["image_seed"] == 6 and record["parameters"]["guidance_scale"] == 2.0
    loaded = server.models["images"].loaded
    images, _ = imagine(loaded.model, loaded.tokenizer, loaded.vq, ["a red circle"], n_images=2, seed=5,
                        guidance_scale=2.0, progress=False)
    for png, image in zip(pngs, images, strict=True):
        assert (np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) == image).all()
    alone = client.images.generate(model="images", prompt="a red circle", n=1,
                                   extra_body={"seed": 6, "guidance_scale": 2.0})
    assert Image.open(io.BytesIO(base64.b64decode(alone.data[0].b64_json))).tobytes() == Image.open(
        io.BytesIO(pngs[1])).tobytes()


def test_diffusion_images_are_the_librarys_at_the_requested_steps(client, server):
    response = client.images.generate(model="diffusion", prompt="a red circle", n=2,
                                      extra_body={"seed": 3, "guidance_scale": 2.5, "steps": 6,
                                                  "negative_prompt": "a cyan triangle"})
    pngs = [base64.b64decode(d.b64_json) for d in response.data]
    loaded = server.models["diffusion"].loaded
    images, _ = diffuse(loaded.model, loaded.tokenizer, loaded.vae, ["a red circle"], n_images=2, seed=3,
                        guidance_scale=2.5, sampling=DiffusionSampling(steps=6),
                        negative_prompts=["a cyan triangle"], progress=False)
    for png, image in zip(pngs, images, strict=True):
        assert (np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) == image).all()
    params = read_png_metadata(io.BytesIO(pngs[1]))["parameters"]
    assert params["steps"] == 6 and params["sampler"] == "dpm++" and params["image_seed"] == 4
    for extra, param in (({"steps": 5000}, "steps"), ({"temperature": 0.5}, "temperature")):
        status, _, body = http("POST", server.url + "/v1/images/generations",
                               {"model": "diffusion", "prompt": "a red circle", **extra})
        assert status == 400 and body["error"]["param"] == param


def test_negative_prompt_changes_the_image(client):
    kw = {"model": "images", "prompt": "a red circle", "n": 1}
    plain = client.images.generate(**kw, extra_body={"seed": 1}).data[0].b64_json
    steered = client.images.generate(**kw, extra_body={"seed": 1, "negative_prompt": "a cyan triangle"}).data[0]
    assert steered.b64_json != plain


def test_translation_is_the_librarys(server):
    served = server.models["translate"]
    texts = ["a red circle", "a cyan triangle"]
    status, _, body = http("POST", server.url + "/v1/translations/text",
                           {"model": "translate", "text": texts, "beam_size": 2})
    assert status == 200
    assert [t["text"] for t in body["translations"]] == translate(served.model, served.tokenizer, texts, beam_size=2)


def test_health_and_metrics(server, client):
    status, _, body = http("GET", server.url + "/health")
    assert status == 200 and body["status"] == "ok"
    client.completions.create(model="lm", prompt="a", max_tokens=3)
    status, head, text = http("GET", server.url + "/metrics")
    assert status == 200 and head["content-type"].startswith("text/plain")
    assert 'genloom_requests_total{endpoint="/v1/completions",status="200"}' in text
    for name in ("genloom_prompt_tokens_total", "genloom_generated_tokens_total", "genloom_queue_depth",
                 "genloom_running_batch_size", "genloom_time_to_first_token_seconds_bucket",
                 "genloom_inter_token_latency_seconds_bucket", "genloom_decode_step_seconds_bucket",
                 "genloom_prefill_seconds_bucket"):
        assert name in text, name


def test_the_engines_prefills_and_steps_are_timed(server, client):
    """Every pass of a language model's scheduler lands in the histograms: one prefill for a request, and a step
    for each of its tokens."""
    request = functools.partial(client.completions.create, model="lm", prompt="a b", max_tokens=5, temperature=0)
    assert timed_passes(server, "lm", request, steps=5) == (1, 5)


def test_the_page_and_its_files_are_served(server):
    status, _, page = http("GET", server.url + "/")
    assert status == 200 and "<title>genloom</title>" in page
    for asset in ("/static/app.js", "/static/style.css"):
        assert http("GET", server.url + asset)[0] == 200


def test_rerank_keeps_the_clip_models_best_of_n(checkpoints):
    with LiveServer({"images": checkpoints["images"]}, clip=clip_of(checkpoints)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0)
        assert client.models.retrieve("images").model_dump()["rerank"] is True
        response = client.images.generate(model="images", prompt="a cyan triangle", n=2,
                                          extra_body={"seed": 3, "rerank": 6, "guidance_scale": 1.0})
    best = imagine_best_of(load_text_to_image_model(checkpoints["images"]), load_clip_model(clip_of(checkpoints)),
                           ["a cyan triangle"], 2, 6, seed=3, guidance_scale=1.0, progress=False)
    for data, image, seed in zip(response.data, best.images, best.seeds or [], strict=True):
        png = base64.b64decode(data.b64_json)
        assert (np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) == image).all()
        parameters = read_png_metadata(io.BytesIO(png))["parameters"]
        assert parameters["image_seed"] == seed and parameters["rerank"] == 6 and "clip_score" in parameters


def test_a_diffusion_models_rerank_keeps_the_clip_models_best_of_n(checkpoints):
    """The scheduler's reranked request (its candidates sampled as one group) keeps what `imagine_best_of` keeps."""
    with LiveServer({"diffusion": checkpoints["diffusion"]}, clip=clip_of(checkpoints)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0)
        response = client.images.generate(model="diffusion", prompt="a cyan triangle", n=2,
                                          extra_body={"seed": 4, "rerank": 5, "steps": 3})
    best = imagine_best_of(load_image_generator(checkpoints["diffusion"]), load_clip_model(clip_of(checkpoints)),
                           ["a cyan triangle"], 2, 5, seed=4, sampling=DiffusionSampling(steps=3), guidance_scale=3.0,
                           negative_prompts=[""], progress=False)
    for data, image, seed in zip(response.data, best.images, best.seeds or [], strict=True):
        png = base64.b64decode(data.b64_json)
        assert (np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) == image).all()
        parameters = read_png_metadata(io.BytesIO(png))["parameters"]
        assert parameters["image_seed"] == seed and parameters["rerank"] == 5 and parameters["steps"] == 3


def test_a_reranker_on_another_image_tokenizer_is_refused(checkpoints, tmp_path, capsys):
    other = tmp_path / "clip"
    shutil.copytree(clip_of(checkpoints), other)
    torch.manual_seed(1)
    vq = VQVAE(VQConfig(resolution=8, widths=(8, 8), res_blocks=1, norm_groups=4, codebook_size=16))
    save_checkpoint(tmp_path / "image_tokenizer", vq, "vqvae", vq.config, None)
    code, _, err = run_cli(capsys, "serve", checkpoints["images"], "--clip", other)
    assert code == 1 and "different VQ image tokenizers" in one_error_line(err)


def test_a_calculator_chat_model_calls_it_through_the_server(tmp_path):
    checkpoint = make_calculator_chat(tmp_path / "calc")
    with LiveServer({"calc": checkpoint}) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "What is 2 + 3?"}]
        response = client.chat.completions.create(model="calc", messages=messages, max_tokens=12, temperature=0)
        served = live.models["calc"]
        session = ChatSession(served.model, served.tokenizer, SamplingConfig(max_new_tokens=12, temperature=0))
        content = response.choices[0].message.content
        assert content == session.reply("What is 2 + 3?").text  # the same decoding, calculator included
        assert content.startswith(f"{CALC_END}{OUTPUT_START}error{OUTPUT_END}{CALC_END}")
