"""Bad input gets the right 4xx status and a JSON error in the peer's format; a bad request never
stops the scheduler or disturbs other requests."""

import httpx
import pytest
from serving_helpers import PoisonedModel, lively_engine, running_server
from tiny_models import tiny_config

from codegemma.engine import CodeGemma


@pytest.fixture(scope="module")
def lm(tiny_tokenizer):
    return lively_engine(tiny_tokenizer)


@pytest.fixture(scope="module")
def url(lm):
    with running_server(lm, max_body_bytes=64 << 10) as (base, _):
        yield base


def post(url, path, body=None, **kwargs):
    if body is not None:
        kwargs["json"] = body
    return httpx.post(f"{url}{path}", timeout=30, **kwargs)


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/completions", {"model": "tiny", "prompt": 3}, 400, "prompt"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 10**9}, 400, "context"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": "9"}, 400, "integer"),
        ("/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404, "gpt-4"),
        ("/v1/completions", {"prompt": "x"}, 400, "model"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "temperature": -1}, 400, "temper"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "n": 17}, 400, "'n'"),
        ("/v1/chat/completions", {"model": "tiny", "messages": "hi"}, 400, "messages"),
        ("/v1/chat/completions", {"model": "tiny", "messages": []}, 400, "messages"),
        ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "x"}]}, 400, "content"),
        ("/infill", {"input_prefix": "x"}, 400, "input_suffix"),
        ("/infill", {"input_prefix": "x", "input_suffix": "", "n_predict": -5}, 400, "n_predict"),
        ("/infill", {"input_prefix": 1, "input_suffix": ""}, 400, "input_prefix"),
        ("/infill", {"input_prefix": "", "input_suffix": "", "input_extra": {}}, 400, "extra"),
        ("/infill", {"input_prefix": "", "input_suffix": "", "fim_mode": "x"}, 400, "fim_mode"),
        ("/completion", {"prompt": "x", "n_predict": 10**9}, 400, "context"),
        ("/completion", {"prompt": "x", "top_p": 2}, 400, "top_p"),
        ("/completion", {"prompt": "x", "stop": [1]}, 400, "stop"),
        ("/completion", {"prompt": "x", "stream": "yes"}, 400, "stream"),
        ("/api/generate", {"model": "nope", "prompt": "x"}, 404, "nope"),
        ("/api/generate", {"model": "tiny", "options": {"num_predict": -3}}, 400, "num_predict"),
        ("/api/generate", {"model": "tiny", "options": []}, 400, "options"),
        ("/api/generate", {"model": "tiny", "options": {"num_predict": 10**9}}, 400, "context"),
        ("/api/chat", {"model": "gpt-4", "messages": []}, 404, "gpt-4"),
        (
            "/api/chat",
            {"model": "tiny", "messages": [{"role": "tool", "content": "x"}]},
            400,
            "role",
        ),
    ],
)
def test_bad_fields(url, path, body, status, needle):
    response = post(url, path, {**body, "stream": body.get("stream", False)})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    message = error if isinstance(error, str) else error["message"]
    assert needle in message


def test_error_shapes_follow_the_peer(url):
    openai = post(url, "/v1/completions", {"model": "x", "prompt": ""}).json()["error"]
    assert openai["type"] == "invalid_request_error" and openai["code"] == "model_not_found"
    assert openai["param"] == "model"
    llama = post(url, "/completion", {"prompt": 1}).json()["error"]
    assert llama == {"code": 400, "message": "'prompt' must be a string", "type": llama["type"]}
    assert isinstance(post(url, "/api/generate", {"prompt": ""}).json()["error"], str)


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/v1/completions", b'{"model": "tiny", "prompt": '),  # truncated JSON
        ("/completion", b"[1, 2"),
        ("/completion", b'{"prompt": "\xff\xfe"}'),  # not UTF-8
        ("/completion", b'{"prompt": "x", "temperature": NaN}'),
        ("/api/generate", b"not json"),
        ("/completion", b"[" * 100_000 + b"]" * 100_000),
    ],
)
def test_unreadable_bodies(url, path, content):
    response = post(url, path, content=content, headers={"content-type": "application/json"})
    assert response.status_code in (400, 413), response.text
    assert "error" in response.json()


def test_body_not_an_object_and_lone_surrogates(url):
    assert post(url, "/completion", [1, 2]).status_code == 400
    response = post(url, "/completion", content=b'{"prompt": "\\ud800"}')
    assert response.status_code == 400 and "surrogate" in response.json()["error"]["message"]


def test_oversized_body_is_413(url):
    response = post(url, "/completion", {"prompt": "x" * (100 << 10)})
    assert response.status_code == 413
    assert "larger" in response.json()["error"]["message"]


def test_prompt_over_the_context_window(url, lm):
    long_prompt = "def f(x):\n    return x\n" * lm.context_length
    response = post(url, "/v1/completions", {"model": "tiny", "prompt": long_prompt})
    assert response.status_code == 400 and "context window" in response.json()["error"]["message"]
    # A FIM prompt is cut to fit instead, and says so.
    fim = {"input_prefix": long_prompt[:6000], "input_suffix": "\n", "n_predict": 4}
    answer = post(url, "/infill", fim).json()
    assert answer["truncated"] is True and answer["tokens_evaluated"] < lm.context_length


def test_server_still_answers_after_bad_requests(url):
    for _ in range(3):
        post(url, "/completion", content=b"{")
    good = post(url, "/completion", {"prompt": "x", "n_predict": 3, "temperature": 0})
    assert good.status_code == 200 and good.json()["tokens_predicted"] >= 1


def test_api_key(tiny_tokenizer):
    lm = lively_engine(tiny_tokenizer)
    with running_server(lm, api_key="s3cret") as (url, _):
        body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
        missing = post(url, "/v1/completions", body)
        assert missing.status_code == 401
        assert missing.json()["error"]["type"] == "authentication_error"
        wrong = post(url, "/v1/completions", body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ollama = httpx.get(f"{url}/api/tags")
        assert ollama.status_code == 401 and isinstance(ollama.json()["error"], str)
        assert httpx.get(f"{url}/health").status_code == 200  # public, as in llama.cpp
        good = post(url, "/v1/completions", body, headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200
        other = post(
            url, "/completion", {"prompt": "x", "n_predict": 1}, headers={"X-Api-Key": "s3cret"}
        )
        assert other.status_code == 200


def test_a_failing_request_does_not_affect_others(tiny_tokenizer):
    poison = tiny_tokenizer.encode("zebra", add_bos=False)[0]
    script = tiny_tokenizer.encode("abc abc abc abc", add_bos=False)
    model = PoisonedModel(tiny_config(tiny_tokenizer.vocab_size), script, poison)
    lm = CodeGemma(model, tiny_tokenizer, name="tiny", speculate=0)
    with running_server(lm) as (url, scheduler):
        bad = post(url, "/completion", {"prompt": "zebra", "n_predict": 4})
        assert bad.status_code == 500 and "failed" in bad.json()["error"]["message"]
        good = post(url, "/completion", {"prompt": "hello", "n_predict": 4, "temperature": 0})
        assert good.status_code == 200 and good.json()["tokens_predicted"] == 4
        assert scheduler.load == (0, 0)
