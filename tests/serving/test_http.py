"""The server through real clients: the `openai` package, and httpx on the llama.cpp SSE and
Ollama NDJSON streams. Answers are checked against the engine run directly."""

import json
import threading
import time

import httpx
import openai
import pytest
from serving_helpers import lively_engine, running_server

import codegemma

PREFIX = "class Cache:\n    def get(self, key):\n        if key in self.items:\n            "
SUFFIX = "\n        return None\n"


@pytest.fixture(scope="module")
def lm(tiny_tokenizer):
    return lively_engine(tiny_tokenizer)


@pytest.fixture(scope="module")
def server(lm):
    with running_server(lm, prefill_chunk=32) as (url, scheduler):
        yield url, scheduler


def expected_fim(lm, prefix=PREFIX, suffix=SUFFIX, max_tokens=24, mode="spm"):
    return lm.complete(prefix, suffix, mode=mode, max_new_tokens=max_tokens).text


def sse_events(response):
    """The JSON payloads of a server-sent event stream, and whether it ended with [DONE]."""
    events, done = [], False
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            if payload == "[DONE]":
                done = True
            else:
                events.append(json.loads(payload))
    return events, done


@pytest.mark.parity
def test_openai_completion_with_suffix_is_fim(server, lm):
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    answer = client.completions.create(
        model="tiny", prompt=PREFIX, suffix=SUFFIX, max_tokens=24, temperature=0
    )
    expected = expected_fim(lm)
    assert expected  # the model says something here
    assert answer.choices[0].text == expected
    assert answer.usage.completion_tokens >= 1
    assert answer.usage.prompt_tokens == len(
        lm.tokenizer.encode(codegemma.fim.fim_prompt(PREFIX, SUFFIX, mode="spm"))
    )


@pytest.mark.parity
def test_openai_streaming_pieces_join_to_the_whole(server, lm):
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    stream = client.completions.create(
        model="tiny", prompt=PREFIX, suffix=SUFFIX, max_tokens=24, temperature=0, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == expected_fim(lm)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


@pytest.mark.parity
def test_openai_chat_plain_and_streamed(server, lm):
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def f"}]
    expected = lm.chat(messages, max_new_tokens=12).text
    whole = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=12, temperature=0
    )
    assert whole.choices[0].message.content == expected
    assert whole.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_llamacpp_infill_reports_reuse_and_streams_sse(server, lm):
    url, _ = server
    body = {
        "input_prefix": PREFIX[:40],
        "prompt": PREFIX[40:],
        "input_suffix": SUFFIX,
        "input_extra": [{"filename": "util.py", "text": "def helper():\n    return 1\n"}],
        "n_predict": 24,
        "temperature": 0,
    }
    files = [("util.py", "def helper():\n    return 1\n")]
    expected = lm.complete(PREFIX, SUFFIX, files=files, mode="spm", max_new_tokens=24).text
    first = httpx.post(f"{url}/infill", json=body, timeout=30).json()
    assert first["content"] == expected and first["stop"] is True
    assert first["stop_type"] in ("eos", "limit")
    again = httpx.post(f"{url}/infill", json=body, timeout=30).json()
    assert again["content"] == expected
    assert again["tokens_cached"] == again["tokens_evaluated"] - 1  # only the last token re-ran
    assert again["timings"]["prompt_n"] == 1 and again["timings"]["cache_n"] > 0
    assert again["timings"]["predicted_n"] == again["tokens_predicted"] >= 1
    with httpx.stream("POST", f"{url}/infill", json={**body, "stream": True}, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events, done = sse_events(r)
    assert not done  # llama.cpp's own endpoints end without [DONE]
    assert "".join(e["content"] for e in events) == expected
    assert events[-1]["stop"] is True and all(e["stop"] is False for e in events[:-1])
    assert events[-1]["timings"]["predicted_n"] >= 1


def test_llamacpp_completion_raw_prompt(server, lm):
    url, _ = server
    body = {"prompt": "import os\n", "n_predict": 10, "temperature": 0}
    answer = httpx.post(f"{url}/completion", json=body, timeout=30).json()
    expected = lm.generate(
        "import os\n", max_new_tokens=10, stop_tokens=codegemma.fim.FIM_STOP_TOKENS
    )
    assert answer["content"] == expected.text
    assert answer["tokens_evaluated"] == len(lm.tokenizer.encode("import os\n"))


def test_ollama_ndjson_stream_with_empty_suffix_is_fim(server, lm):
    url, _ = server
    body = {
        "model": "tiny",
        "prompt": PREFIX,
        "suffix": "",
        "options": {"temperature": 0, "num_predict": 16},
    }
    with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert "".join(x["response"] for x in lines) == expected_fim(lm, suffix="", max_tokens=16)
    last = lines[-1]
    assert last["done"] is True and all(x["done"] is False for x in lines[:-1])
    assert last["done_reason"] in ("stop", "length")
    assert last["eval_count"] >= 1 and last["eval_duration"] > 0
    assert last["prompt_eval_count"] >= 1 and last["total_duration"] >= last["eval_duration"]
    whole = httpx.post(f"{url}/api/generate", json={**body, "stream": False}, timeout=30).json()
    assert whole["response"] == expected_fim(lm, suffix="", max_tokens=16)


def test_ollama_chat_tags_and_load(server, lm):
    url, _ = server
    messages = [{"role": "user", "content": "hello"}]
    body = {"model": "tiny:latest", "messages": messages, "stream": False}
    body["options"] = {"temperature": 0, "num_predict": 8}
    answer = httpx.post(f"{url}/api/chat", json=body, timeout=30).json()
    assert answer["message"] == {
        "role": "assistant",
        "content": lm.chat(messages, max_new_tokens=8).text,
    }
    tags = httpx.get(f"{url}/api/tags").json()
    assert tags["models"][0]["name"] == "tiny:latest"
    load = httpx.post(f"{url}/api/generate", json={"model": "tiny", "stream": False}).json()
    assert load["done"] is True and load["done_reason"] == "load" and load["response"] == ""
    show = httpx.post(f"{url}/api/show", json={"model": "tiny"}).json()
    assert show["model_info"]["gemma.context_length"] == lm.context_length


def test_health_and_models(server):
    url, _ = server
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == "tiny"


def test_warming_request_fills_the_cache(server, lm):
    url, _ = server
    body = {"input_prefix": "def warm():\n", "input_suffix": "\n", "n_predict": 0}
    warm = httpx.post(f"{url}/infill", json=body, timeout=30).json()
    assert warm["content"] == "" and warm["tokens_predicted"] == 0
    body = {**body, "input_prefix": "def warm():\n    x", "n_predict": 4, "temperature": 0}
    typed = httpx.post(f"{url}/infill", json=body, timeout=30).json()
    assert typed["tokens_cached"] >= warm["tokens_evaluated"] - 3


def test_ignore_eos_generates_every_token_asked_for(tiny_tokenizer):
    from tiny_models import ScriptedModel, tiny_config

    from codegemma.engine import CodeGemma

    script = [tiny_tokenizer.eos_id]
    model = ScriptedModel(tiny_config(tiny_tokenizer.vocab_size), script)
    with running_server(CodeGemma(model, tiny_tokenizer, name="tiny", speculate=0)) as (url, _):
        body = {"input_prefix": "x", "input_suffix": "", "n_predict": 5}
        stopped = httpx.post(f"{url}/infill", json=body, timeout=30).json()
        assert stopped["tokens_predicted"] == 1 and stopped["stop_type"] == "eos"
        kept = httpx.post(f"{url}/infill", json={**body, "ignore_eos": True}, timeout=30).json()
        assert kept["tokens_predicted"] == 5 and kept["stop_type"] == "limit"
        assert kept["content"] == "<eos>" * 5


def test_serve_command_binds_loopback_by_default(monkeypatch):
    from codegemma.cli import _parser

    monkeypatch.delenv("CODEGEMMA_API_KEY", raising=False)
    args = _parser().parse_args(["serve", "--model", "m"])
    assert (args.host, args.port, args.fim_mode, args.api_key is None) == (
        "127.0.0.1",
        8080,
        "spm",
        True,
    )
    assert callable(args.run)


def test_fim_order_per_request(server, lm):
    url, _ = server
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 24, "temperature": 0}
    psm = expected_fim(lm, mode="psm")
    assert psm != expected_fim(lm, mode="spm")  # the order shows in the answer
    answer = httpx.post(f"{url}/infill", json={**body, "fim_mode": "psm"}, timeout=30).json()
    assert answer["content"] == psm
    openai_body = {"model": "tiny", "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 24}
    answer = httpx.post(
        f"{url}/v1/completions", json={**openai_body, "temperature": 0}, timeout=30
    ).json()
    assert answer["choices"][0]["text"] == expected_fim(lm, mode="spm")  # the server's default


def test_fim_order_per_server(lm):
    with running_server(lm, fim_mode="psm") as (url, _):
        body = {"model": "tiny", "prompt": PREFIX, "suffix": SUFFIX, "stream": False}
        body["options"] = {"temperature": 0, "num_predict": 24}
        answer = httpx.post(f"{url}/api/generate", json=body, timeout=30).json()
        assert answer["response"] == expected_fim(lm, mode="psm")
        spm = {**body, "fim_mode": "spm"}
        answer = httpx.post(f"{url}/api/generate", json=spm, timeout=30).json()
        assert answer["response"] == expected_fim(lm, mode="spm")


def test_sliding_window_client_reuses_the_cache_through_a_stable_start(tiny_tokenizer):
    """An editor that sends the last 1500 characters before the cursor moves the start of its
    prefix on every keystroke; the server starts the prompt at a stable line instead, reports
    `truncated`, and recomputes only the typed tokens. Without the stable start, everything
    after the (constant) suffix is recomputed."""
    source = "".join(f"    value_{i} = compute(items[{i}], {i * 7 % 13})\n" for i in range(900))
    suffix = "\n        return result\n"
    lm = lively_engine(tiny_tokenizer, max_position_embeddings=2048)

    def replay(start: int, stable: bool) -> list[dict]:
        answers = []
        for cursor in range(start, start + 24, 4):
            body = {
                "input_prefix": source[cursor - 1500 : cursor],
                "input_suffix": suffix,
                "n_predict": 2,
                "temperature": 0,
                "stable_prefix": stable,
            }
            answers.append(httpx.post(f"{url}/infill", json=body, timeout=30).json())
        return answers

    with running_server(lm) as (url, _):
        moving = replay(20_000, stable=False)
        stable = replay(30_000, stable=True)
    suffix_tokens = len(tiny_tokenizer.encode(suffix, add_bos=False))
    assert all(a["truncated"] is False for a in moving)
    assert all(a["tokens_cached"] <= suffix_tokens + 4 for a in moving[1:])
    assert all(a["truncated"] is True for a in stable)
    assert all(a["tokens_cached"] >= a["tokens_evaluated"] - 8 for a in stable[1:])
    assert stable[-1]["tokens_evaluated"] > 300  # a prompt worth reusing


def test_llamacpp_response_fields_flatten_the_answer(server):
    """llama.vim asks for a few fields by path and reads them as flat keys."""
    url, _ = server
    fields = ["content", "timings/prompt_n", "tokens_cached", "truncated", "timings/nope", "x/y"]
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 4, "temperature": 0}
    answer = httpx.post(f"{url}/infill", json={**body, "response_fields": fields}, timeout=30)
    full = httpx.post(f"{url}/infill", json=body, timeout=30).json()
    assert answer.json() == {
        "content": full["content"],
        "timings/prompt_n": 1,  # the second identical request recomputes only its last token
        "tokens_cached": full["tokens_cached"],
        "truncated": False,
    }
    bad = httpx.post(f"{url}/infill", json={**body, "response_fields": [1]}, timeout=30)
    assert bad.status_code == 400 and "response_fields" in bad.json()["error"]["message"]


def test_slow_prompt_building_does_not_block_the_event_loop(lm, monkeypatch):
    """A huge body takes seconds to tokenize; meanwhile other clients are still answered."""
    with running_server(lm) as (url, scheduler):
        build = scheduler.build

        def slow_build(request):
            if "slow" in request.input.text:
                time.sleep(1.0)
            return build(request)

        monkeypatch.setattr(scheduler, "build", slow_build)
        body = {"prompt": "slow", "n_predict": 1}
        slow = threading.Thread(
            target=httpx.post, args=(f"{url}/completion",), kwargs={"json": body}
        )
        slow.start()
        time.sleep(0.2)
        started = time.perf_counter()
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        assert time.perf_counter() - started < 0.5
        slow.join(10)
