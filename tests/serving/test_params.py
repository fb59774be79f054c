"""Parameters through the peers' clients: several candidates (`n`, `n_cmpl`), log-probabilities
(`logprobs`, `top_logprobs`, `n_probs`) checked against the model's own logits, truncation on
request, context chunks that do not fit, the finish reason of superseded requests, and every
parameter this server does not implement refused with a 400 naming it."""

import json
import threading
import time

import httpx
import openai
import pytest
import torch
from serving_helpers import SlowModel, lively_engine, running_server
from tiny_models import tiny_config

from codegemma.engine import CodeGemma
from codegemma.fim import FIM_STOP_TOKENS
from codegemma.serving.results import token_bytes

PREFIX = "class Cache:\n    def get(self, key):\n        "
SUFFIX = "\n        return None\n"


@pytest.fixture(scope="module")
def lm(tiny_tokenizer):
    return lively_engine(tiny_tokenizer)


@pytest.fixture(scope="module")
def url(lm):
    with running_server(lm, max_active=4) as (base, _):
        yield base


def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def sse(response):
    return [
        json.loads(line[6:])
        for line in response.iter_lines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


@pytest.mark.parity
def test_openai_n_sampled_candidates_each_equal_its_seed_alone(url, lm):
    answer = client(url).completions.create(
        model="tiny", prompt="import os\n", max_tokens=10, temperature=1.0, seed=7, n=3
    )
    assert [c.index for c in answer.choices] == [0, 1, 2]
    generated = 0
    for choice in answer.choices:  # candidate i samples with seed + i
        alone = lm.generate(
            "import os\n",
            max_new_tokens=10,
            temperature=1.0,
            seed=7 + choice.index,
            stop_tokens=FIM_STOP_TOKENS,
        )
        assert choice.text == alone.text
        generated += alone.usage.completion_tokens
    assert len({c.text for c in answer.choices}) > 1
    assert answer.usage.completion_tokens == generated


@pytest.mark.parity
def test_openai_chat_n_streamed_with_indexes(url, lm):
    messages = [{"role": "user", "content": "hello"}]
    stream = client(url).chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, temperature=0.9, seed=1, n=2, stream=True
    )
    texts, reasons = {0: "", 1: ""}, {}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                reasons[choice.index] = choice.finish_reason
    for index in (0, 1):
        alone = lm.chat(messages, max_new_tokens=8, temperature=0.9, seed=1 + index)
        assert texts[index] == alone.text
    assert set(reasons) == {0, 1}


@pytest.mark.parity
def test_greedy_candidates_are_identical_and_computed_once(lm):
    with running_server(lm) as (url, scheduler):
        before = scheduler.completed
        answer = client(url).completions.create(
            model="tiny", prompt=PREFIX, suffix=SUFFIX, max_tokens=12, temperature=0, n=3
        )
        assert scheduler.completed == before + 1  # one sequence ran
    texts = [c.text for c in answer.choices]
    assert texts == [lm.complete(PREFIX, SUFFIX, mode="spm", max_new_tokens=12).text] * 3


def test_llamacpp_n_cmpl_answers_an_array_and_streams_indexed_events(url, lm):
    body = {"prompt": "import os\n", "n_predict": 6, "temperature": 1.0, "seed": 3, "n_cmpl": 2}
    answers = httpx.post(f"{url}/completion", json=body, timeout=30).json()
    assert [a["index"] for a in answers] == [0, 1]
    # the second candidate starts from a copy of the first one's computed prompt
    assert answers[1]["tokens_cached"] == answers[1]["tokens_evaluated"] - 1
    with httpx.stream("POST", f"{url}/completion", json={**body, "stream": True}) as response:
        events = sse(response)
    for answer in answers:
        streamed = "".join(e["content"] for e in events if e["index"] == answer["index"])
        assert streamed == answer["content"]
    assert sum(e["stop"] for e in events) == 2


def reference_logprobs(lm, prompt_ids, generated):
    """log_softmax of the model's own logits at each generated position."""
    logits = lm.logits(prompt_ids + generated)  # (T, V)
    start = len(prompt_ids) - 1
    return torch.log_softmax(logits[start : start + len(generated)], dim=-1)


@pytest.mark.parity
def test_openai_completion_logprobs_match_the_model(url, lm):
    answer = client(url).completions.create(
        model="tiny", prompt="import os\n", max_tokens=8, temperature=0, logprobs=3
    )
    logprobs = answer.choices[0].logprobs
    generated = lm.generate("import os\n", max_new_tokens=8, stop_tokens=FIM_STOP_TOKENS)
    ids = generated.token_ids
    reference = reference_logprobs(lm, lm.tokenizer.encode("import os\n"), ids)
    assert len(logprobs.tokens) == len(ids) == len(logprobs.token_logprobs)
    for step, (token, value) in enumerate(zip(ids, logprobs.token_logprobs, strict=True)):
        assert value == pytest.approx(float(reference[step, token]), abs=1e-4)
        top = torch.topk(reference[step], 3)
        assert sorted(logprobs.top_logprobs[step].values(), reverse=True) == pytest.approx(
            top.values.tolist(), abs=1e-4
        )
    offsets = [0]
    for text in logprobs.tokens[:-1]:
        offsets.append(offsets[-1] + len(text))
    assert logprobs.text_offset == offsets


def token_bytes_of(lm, ids):
    return [bytes(token_bytes(lm.tokenizer, token)) for token in ids]


@pytest.mark.parity
def test_openai_chat_top_logprobs(url, lm):
    messages = [{"role": "user", "content": "hi"}]
    answer = client(url).chat.completions.create(
        model="tiny", messages=messages, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    content = answer.choices[0].logprobs.content
    ids = lm.chat(messages, max_new_tokens=5).token_ids
    assert [bytes(c.bytes) for c in content] == token_bytes_of(lm, ids)
    assert all(len(c.top_logprobs) == 2 and c.logprob <= 0 for c in content)
    assert all(c.top_logprobs[0].logprob == pytest.approx(c.logprob) for c in content)  # greedy


def test_llamacpp_n_probs(url, lm):
    body = {"prompt": "import os\n", "n_predict": 5, "temperature": 0, "n_probs": 4}
    answer = httpx.post(f"{url}/completion", json=body, timeout=30).json()
    probs = answer["completion_probabilities"]
    ids = lm.generate("import os\n", max_new_tokens=5, stop_tokens=FIM_STOP_TOKENS).token_ids
    assert [p["id"] for p in probs] == ids
    assert [bytes(p["bytes"]) for p in probs] == token_bytes_of(lm, ids)
    assert all(len(p["top_logprobs"]) == 4 for p in probs)
    assert all(p["top_logprobs"][0]["id"] == p["id"] for p in probs)  # greedy: the top one


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"frequency_penalty": 0.5}, "frequency_penalty"),
        ("/v1/completions", {"logit_bias": {"5": 10}}, "logit_bias"),
        ("/v1/completions", {"best_of": 3}, "best_of"),
        ("/v1/completions", {"bogus": 1}, "bogus"),
        ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
        ("/v1/chat/completions", {"tools": [{"type": "function"}]}, "tools"),
        ("/v1/chat/completions", {"presence_penalty": 1}, "presence_penalty"),
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("/completion", {"grammar": 'root ::= "a"'}, "grammar"),
        ("/completion", {"json_schema": {}}, "json_schema"),
        ("/completion", {"repeat_penalty": 1.1}, "repeat_penalty"),
        ("/completion", {"min_p": 0.05}, "min_p"),
        ("/completion", {"post_sampling_probs": True}, "post_sampling_probs"),
        ("/completion", {"samplers": ["top_k", "mystery"]}, "samplers"),
        ("/completion", {"n_keep": 5}, "n_keep"),
        ("/completion", {"mystery": 1}, "mystery"),
        ("/api/generate", {"options": {"mirostat": 2}}, "mirostat"),
        ("/api/generate", {"options": {"repeat_penalty": 1.1}}, "repeat_penalty"),
        ("/api/generate", {"options": {"mystery": 1}}, "mystery"),
        ("/api/generate", {"format": "json"}, "format"),
        ("/api/generate", {"system": "be brief"}, "system"),
        ("/api/chat", {"tools": [{"type": "function"}]}, "tools"),
    ],
)
def test_unsupported_parameters_are_refused_by_name(url, path, body, param):
    base = {
        "/v1/completions": {"model": "tiny", "prompt": "x", "max_tokens": 2},
        "/v1/chat/completions": {"model": "tiny", "messages": [{"role": "user", "content": "x"}]},
        "/completion": {"prompt": "x", "n_predict": 2},
        "/api/generate": {"model": "tiny", "prompt": "x", "stream": False},
        "/api/chat": {"model": "tiny", "messages": [], "stream": False},
    }[path]
    response = httpx.post(f"{url}{path}", json={**base, **body}, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    message = error if isinstance(error, str) else error["message"]
    assert f"'{param}'" in message
    if path.startswith("/v1/"):
        assert error["param"] == param


@pytest.mark.parity
def test_message_fields_and_parts_we_cannot_honour_are_refused(url):
    chat = client(url).chat.completions
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError, match="image_url"):
        chat.create(model="tiny", messages=[{"role": "user", "content": [image]}])
    with pytest.raises(openai.BadRequestError, match="'name'"):
        chat.create(model="tiny", messages=[{"role": "user", "content": "x", "name": "bob"}])
    ollama = {"model": "tiny", "stream": False}
    images = [{"role": "user", "content": "x", "images": ["AAAA"]}]
    response = httpx.post(f"{url}/api/chat", json={**ollama, "messages": images})
    assert response.status_code == 400 and "'images'" in response.json()["error"]


@pytest.mark.parity
def test_neutral_values_and_editor_fields_are_accepted(url):
    """What editors and SDKs send by default must work: llama.vim's sampler list and timing
    fields, llama.vscode's chunk `time`, OpenAI neutral penalties, Continue's `num_ctx`."""
    llama_vim = {
        "input_prefix": "def f():\n",
        "input_suffix": "\n",
        "input_extra": [{"filename": "a.py", "text": "x = 1\n", "time": 12.5}],
        "prompt": "    ",
        "n_predict": 4,
        "top_k": 40,
        "top_p": 0.9,
        "samplers": ["top_k", "top_p", "infill"],
        "stream": False,
        "cache_prompt": True,
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 1000,
        "n_indent": 4,
        "model": "anything",
        "response_fields": ["content", "timings/prompt_n", "truncated"],
    }
    assert httpx.post(f"{url}/infill", json=llama_vim, timeout=30).status_code == 200
    warm = {**llama_vim, "n_predict": 0, "samplers": []}
    assert httpx.post(f"{url}/infill", json=warm, timeout=30).status_code == 200
    answer = client(url).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        max_tokens=2,
        frequency_penalty=0,
        presence_penalty=0.0,
        logit_bias={},
        response_format={"type": "text"},
        tools=[],
        tool_choice="none",
        user="me",
    )
    assert answer.choices[0].finish_reason in ("stop", "length")
    continue_body = {
        "model": "tiny",
        "prompt": "def f",
        "suffix": "\n",
        "raw": True,
        "stream": False,
        "keep_alive": 1800,
        "options": {"num_predict": 2, "num_ctx": 8192, "temperature": 0.01, "stop": ["\n\n"]},
    }
    assert httpx.post(f"{url}/api/generate", json=continue_body, timeout=30).status_code == 200


def test_samplers_left_out_are_not_run(url, lm):
    """llama.cpp runs only the samplers listed: without "temperature", sampling is at
    temperature 1 even if `temperature` says 0."""
    body = {"prompt": "import os\n", "n_predict": 8, "temperature": 0, "seed": 5}
    greedy = httpx.post(f"{url}/completion", json=body, timeout=30).json()
    assert greedy["generation_settings"]["samplers"] == ["top_k", "top_p", "temperature"]
    sampled = httpx.post(
        f"{url}/completion", json={**body, "samplers": ["top_k"], "top_k": 0}, timeout=30
    ).json()
    alone = lm.generate(
        "import os\n", max_new_tokens=8, temperature=1.0, seed=5, stop_tokens=FIM_STOP_TOKENS
    )
    assert sampled["content"] == alone.text != greedy["content"]
    assert sampled["generation_settings"]["samplers"] == ["top_k"]


@pytest.mark.parity
def test_truncation_on_request_in_every_dialect(url, lm):
    long_prompt = "def f(x):\n    return x\n" * lm.context_length
    with pytest.raises(openai.BadRequestError) as caught:
        client(url).completions.create(model="tiny", prompt=long_prompt, max_tokens=4)
    assert '"truncate": true' in caught.value.body["message"]
    answer = client(url).completions.create(
        model="tiny", prompt=long_prompt, max_tokens=4, extra_body={"truncate": True}
    )
    assert answer.usage.prompt_tokens <= lm.context_length - 4
    assert answer.usage.prompt_tokens_details.truncated_tokens > 0
    messages = [{"role": "user", "content": long_prompt}]
    refused = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": messages})
    assert refused.status_code == 400 and '"truncate": true' in refused.json()["error"]["message"]
    llama = {"prompt": long_prompt, "n_predict": 4, "truncate": True}
    cut = httpx.post(f"{url}/completion", json=llama, timeout=30).json()
    assert cut["truncated"] is True and cut["truncated_tokens"] > 0
    ollama = {"model": "tiny", "prompt": long_prompt, "stream": False}
    ollama["options"] = {"num_predict": 4}
    assert httpx.post(f"{url}/api/generate", json=ollama, timeout=30).status_code == 200
    strict = httpx.post(f"{url}/api/generate", json={**ollama, "truncate": False}, timeout=30)
    assert strict.status_code == 400 and "truncat" in strict.json()["error"]
    chat = {"model": "tiny", "messages": messages, "stream": False, "options": {"num_predict": 2}}
    assert httpx.post(f"{url}/api/chat", json=chat, timeout=30).status_code == 200


def test_context_chunks_that_do_not_fit_are_dropped_farthest_first(url, lm, tiny_tokenizer):
    chunks = [
        {"filename": f"m{i}.py", "text": "".join(f"v{i}_{j} = {j}\n" for j in range(30))}
        for i in range(16)
    ]
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 4, "temperature": 0}
    answer = httpx.post(f"{url}/infill", json={**body, "input_extra": chunks}, timeout=30).json()
    assert answer["truncated"] is True
    dropped = answer["input_extra_dropped"]
    assert 0 < dropped < 16
    kept = [(c["filename"], c["text"]) for c in chunks[dropped:]]  # the nearest: the last ones
    expected = lm.complete(PREFIX, SUFFIX, files=kept, mode="spm", max_new_tokens=4)
    assert answer["content"] == expected.text
    sizes = [
        len(tiny_tokenizer.encode(f"{c['filename']}\n{c['text']}", add_bos=False)) for c in chunks
    ]
    assert answer["input_extra_dropped_tokens"] == sum(sizes[:dropped])
    assert answer["tokens_evaluated"] <= lm.context_length


@pytest.mark.parity
def test_a_superseded_completion_says_cancelled(tiny_tokenizer):
    script = tiny_tokenizer.encode("abc", add_bos=False)
    model = SlowModel(tiny_config(tiny_tokenizer.vocab_size), script, 0.02)
    lm = CodeGemma(model, tiny_tokenizer, name="tiny", speculate=0)
    with running_server(lm) as (url, _):
        first = {}

        def ask():
            first["answer"] = client(url).completions.create(
                model="tiny", prompt="a", max_tokens=300, user="editor"
            )

        thread = threading.Thread(target=ask)
        thread.start()
        while model.steps < 5:
            time.sleep(0.01)
        second = client(url).completions.create(
            model="tiny", prompt="b", max_tokens=3, user="editor"
        )
        thread.join(10)
    assert first["answer"].choices[0].finish_reason == "cancelled"
    assert second.choices[0].finish_reason == "length"
