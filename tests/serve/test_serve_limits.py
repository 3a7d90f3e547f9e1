"""Every refusal in OpenAI's error shape (400 for bad parameters, never 422; 404, 401, 413, 429) and one-line CLI
errors."""

from __future__ import annotations

import threading

import openai
import pytest
from cli_helpers import one_error_line, run_cli
from server_helpers import LiveServer, http


def _error(server, path, body, headers=None):
    status, head, payload = http("POST", server.url + path, body, headers)
    assert set(payload["error"]) == {"message", "type", "param", "code"}, payload
    return status, head, payload["error"]


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "lm", "prompt": "a", "max_tokens": "many"}, "max_tokens"),
    ({"model": "lm", "prompt": "a", "temperature": 3}, "temperature"),
    ({"model": "lm", "prompt": "a", "top_p": 0}, "top_p"),
    ({"model": "lm", "prompt": "a", "n": 1000}, "n"),
    ({"model": "lm", "prompt": "a", "logprobs": 50}, "logprobs"),
    ({"model": "lm", "prompt": "a", "presence_penalty": 9}, "presence_penalty"),
    ({"model": "lm"}, "prompt"),
    ({"model": "lm", "prompt": "a", "stop": ["1", "2", "3", "4", "5"]}, "stop"),
    ({"model": "lm", "prompt": "a", "max_tokens": 0}, "max_tokens"),
])
def test_invalid_completion_parameters_are_400_naming_the_field(server, body, param):
    status, _, error = _error(server, "/v1/completions", body)
    assert status == 400 and error["param"] == param and error["type"] == "invalid_request_error"


@pytest.mark.parametrize("field", [{"suffix": "end"}, {"tools": [{"type": "function"}]}])
def test_openai_parameters_genloom_lacks_are_refused_not_dropped(server, field):
    status, _, error = _error(server, "/v1/completions", {"model": "lm", "prompt": "a", **field})
    assert status == 400 and error["code"] == "unsupported_parameter" and error["param"] == next(iter(field))
    ignored = {"model": "lm", "prompt": "a", "max_tokens": 2, "user": "me", "best_of": 1, "logit_bias": {}}
    assert http("POST", server.url + "/v1/completions", ignored)[0] == 200


@pytest.mark.parametrize(("field", "message"), [
    ({"logit_bias": {"many": 5}}, "token ids, not 'many'"),
    ({"logit_bias": {"5": 101}}, "in [-100, 100]"),
    ({"logit_bias": {"100000": 1}}, "token id 100000 is outside"),
    ({"logit_bias": {"-1": 1}}, "token id -1 is outside"),
    ({"logit_bias": {str(i): 1 for i in range(301)}}, "at most 300"),
    ({"best_of": 2, "n": 3}, "best_of (2) must be at least n (3)"),
    ({"best_of": 3, "stream": True}, "cannot be streamed"),
    ({"best_of": 99}, "less than or equal to 16"),
    ({"n": 3, "prompt": ["a", "b", "c"]}, "asks for 9 sequences (prompts x n, or x best_of); this server queues at "
                                          "most 8"),
    ({"prompt": [[]]}, "at least one token"),
    ({"prompt": [1, 100000]}, "token id 100000 is outside"),
    ({"prompt": [[1], [-2]]}, "token id -2 is outside"),
    ({"prompt": [1, "a"]}, ""),
])
def test_logit_bias_best_of_and_token_prompts_are_checked(server, field, message):
    param = next(iter(field))
    for path, body in [("/v1/completions", {"model": "lm", "prompt": "a", **field}),
                       ("/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "a"}],
                                                 **field})]:
        if param != "logit_bias" and path.endswith("chat/completions"):
            continue  # best_of and prompt are the completions endpoint's
        status, _, error = _error(server, path, body)
        assert status == 400 and error["param"] == param and message in error["message"], error


@pytest.mark.parametrize(("path", "body", "param", "message"), [
    ("/tokenize", {"model": "lm"}, "prompt", "either `prompt` or `messages`"),
    ("/tokenize", {"model": "lm", "prompt": "a", "messages": [{"role": "user", "content": "a"}]}, "prompt", "either"),
    ("/tokenize", {"model": "lm", "messages": [{"role": "user", "content": "a"}]}, "model", "no chat template"),
    ("/tokenize", {"model": "images", "prompt": "a"}, "model", "needs a text model"),
    ("/detokenize", {"model": "lm", "tokens": [1, 100000]}, "tokens", "token id 100000 is outside"),
])
def test_tokenize_and_detokenize_refusals(server, path, body, param, message):
    status, _, error = _error(server, path, body)
    assert status == 400 and error["param"] == param and message in error["message"], error


def test_a_body_that_is_not_json_is_400(server):
    status, _, payload = http("POST", server.url + "/v1/completions", raw=b"{not json")
    assert status == 400 and payload["error"]["type"] == "invalid_request_error"


def test_unknown_model_is_404_and_names_the_served_ones(server):
    status, _, error = _error(server, "/v1/completions", {"model": "../../etc/passwd", "prompt": "a"})
    assert status == 404 and error["code"] == "model_not_found" and "lm" in error["message"]


def test_context_length_exceeded_names_both_sizes(server):
    status, _, error = _error(server, "/v1/completions", {"model": "lm", "prompt": "a" * 90, "max_tokens": 10})
    assert status == 400 and error["code"] == "context_length_exceeded"
    assert "96" in error["message"] and "90 in the prompt" in error["message"]
    status, _, error = _error(server, "/v1/chat/completions",
                              {"model": "chat", "messages": [{"role": "user", "content": "b" * 200}]})
    assert status == 400 and error["code"] == "context_length_exceeded"


def test_chat_on_a_model_without_a_template_is_400(server):
    status, _, error = _error(server, "/v1/chat/completions",
                              {"model": "lm", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 400 and error["code"] == "model_has_no_chat_template" and "train chat" in error["message"]


def test_bad_chat_messages_are_400(server):
    status, _, error = _error(server, "/v1/chat/completions",
                              {"model": "chat", "messages": [{"role": "wizard", "content": "hi"}]})
    assert status == 400 and "wizard" in error["message"]
    status, _, error = _error(server, "/v1/chat/completions", {"model": "chat", "messages": []})
    assert status == 400 and error["param"] == "messages"


def test_text_the_tokenizer_cannot_encode_is_400(server):
    status, _, error = _error(server, "/v1/completions", {"model": "lm", "prompt": "snow ☃"})
    assert status == 400 and "☃" in error["message"]


def test_wrong_model_kind_is_400(server):
    status, _, error = _error(server, "/v1/completions", {"model": "images", "prompt": "a"})
    assert status == 400 and error["code"] == "wrong_model_kind"
    status, _, error = _error(server, "/v1/images/generations", {"model": "lm", "prompt": "a"})
    assert status == 400 and error["code"] == "wrong_model_kind"


@pytest.mark.parametrize(("extra", "param"), [
    ({"size": "512x512"}, "size"), ({"n": 9}, "n"), ({"response_format": "url"}, "response_format"),
    ({"steps": 3}, "steps"), ({"rerank": 4}, "rerank"), ({"guidance_scale": -1}, "guidance_scale"),
    ({"rerank": 65}, "rerank"),
])
def test_image_limits_are_400(server, extra, param):
    status, _, error = _error(server, "/v1/images/generations", {"model": "images", "prompt": "a red circle", **extra})
    assert status == 400 and error["param"] == param


def test_a_caption_too_long_for_the_model_is_400(server):
    status, _, error = _error(server, "/v1/images/generations", {"model": "images", "prompt": "a red circle " * 20})
    assert status == 400 and "caption" in error["message"]


def test_translation_limits_are_400(server):
    status, _, error = _error(server, "/v1/translations/text", {"model": "translate", "text": ["a"] * 65})
    assert status == 400 and error["param"] == "text"
    status, _, error = _error(server, "/v1/translations/text", {"model": "translate", "text": "a red circle " * 20})
    assert status == 400 and "max_len" in error["message"]


def test_a_body_over_the_limit_is_413(checkpoints):
    with LiveServer({"lm": checkpoints["lm"]}, max_body_bytes=1000) as server:
        status, _, error = _error(server, "/v1/completions", {"model": "lm", "prompt": "a" * 2000})
        assert status == 413 and error["code"] == "request_too_large"


def test_an_api_key_is_required_and_compared(checkpoints):
    with LiveServer({"lm": checkpoints["lm"]}, api_key="s3cret-key") as server:
        status, _, error = _error(server, "/v1/completions", {"model": "lm", "prompt": "a"})
        assert status == 401 and error["code"] == "invalid_api_key"
        wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret-kez", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.completions.create(model="lm", prompt="a", max_tokens=2)
        right = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret-key", max_retries=0)
        assert right.completions.create(model="lm", prompt="a", max_tokens=2).choices[0].text
        assert http("GET", server.url + "/health")[0] == 200  # probes need no key
        for path, body in [("/tokenize", {"model": "lm", "prompt": "a"}),
                           ("/detokenize", {"model": "lm", "tokens": []})]:
            assert _error(server, path, body)[0] == 401  # outside /v1/, but they serve the model
            assert http("POST", server.url + path, body, {"Authorization": "Bearer s3cret-key"})[0] == 200


def test_a_full_queue_is_429_with_retry_after(checkpoints):
    with LiveServer({"lm": checkpoints["lm"]}, max_queue=1) as server:
        server.models["lm"].worker.stop()  # nothing leaves the queue now
        waiting = threading.Thread(target=http, args=("POST", server.url + "/v1/completions",
                                                      {"model": "lm", "prompt": "a", "max_tokens": 2}), daemon=True)
        waiting.start()
        queue_depth = 'genloom_queue_depth{model="lm"} 1.0'
        for _ in range(200):
            if queue_depth in http("GET", server.url + "/metrics")[2]:
                break
            threading.Event().wait(0.02)
        status, head, error = _error(server, "/v1/completions", {"model": "lm", "prompt": "a", "max_tokens": 2})
        assert status == 429 and head["retry-after"] == "1" and error["type"] == "rate_limit_error"


def test_serving_beyond_loopback_needs_a_key(checkpoints, capsys):
    code, _, err = run_cli(capsys, "serve", checkpoints["lm"], "--host", "0.0.0.0")
    assert code == 1 and "without an API key" in one_error_line(err)


def test_model_names_must_be_unique_and_plain(checkpoints, capsys):
    code, _, err = run_cli(capsys, "serve", "--name", f"a={checkpoints['lm']}", "--name", f"a={checkpoints['chat']}")
    assert code == 1 and "two models are named 'a'" in one_error_line(err)
    code, _, err = run_cli(capsys, "serve", "--name", f"a/b={checkpoints['lm']}")
    assert code == 1 and "may hold only" in one_error_line(err)


def test_only_safetensors_are_loaded(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    code, _, err = run_cli(capsys, "serve", tmp_path)
    assert code == 1 and "only safetensors" in one_error_line(err)
