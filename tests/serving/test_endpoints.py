"""The peers' other endpoints, through their own clients where one exists: llama.cpp /props,
/slots, /tokenize, /detokenize, /metrics (parsed by prometheus_client), /embedding; OpenAI
/v1/models/{id} and /v1/embeddings (the `openai` package); Ollama /api/embed, /api/ps,
/api/tags, keep_alive and `GET /`; unknown paths answer in the path's peer's error format."""

import json
import re
import threading
import time

import httpx
import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import SlowModel, lively_engine, running_server
from tiny_models import tiny_config

from codegemma.engine import CodeGemma
from codegemma.serving.adapters.ollama import parameter_size
from codegemma.serving.info import parameter_count


@pytest.fixture(scope="module")
def lm(tiny_tokenizer):
    return lively_engine(tiny_tokenizer)


@pytest.fixture(scope="module")
def server(lm):
    with running_server(lm, max_active=3) as (url, scheduler):
        yield url, scheduler


def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_props_describe_the_server(server, lm):
    url, _ = server
    props = httpx.get(f"{url}/props").json()
    assert props["total_slots"] == 3
    settings = props["default_generation_settings"]
    assert settings["n_ctx"] == lm.context_length
    assert settings["params"]["temperature"] == 0.8 and settings["params"]["top_k"] == 40
    assert "<start_of_turn>" in props["chat_template"]
    assert props["modalities"] == {"vision": False, "audio": False}


def test_tokenize_and_detokenize_round_trip(server, lm):
    url, _ = server
    text = "def f(x):\n    return x  # café"
    plain = httpx.post(f"{url}/tokenize", json={"content": text}).json()
    assert plain == {"tokens": lm.tokenizer.encode(text, add_bos=False)}
    special = httpx.post(f"{url}/tokenize", json={"content": text, "add_special": True}).json()
    assert special["tokens"] == lm.tokenizer.encode(text)
    pieces = httpx.post(f"{url}/tokenize", json={"content": text, "with_pieces": True}).json()
    assert [p["id"] for p in pieces["tokens"]] == plain["tokens"]
    joined = b"".join(
        bytes(p["piece"]) if isinstance(p["piece"], list) else p["piece"].encode()
        for p in pieces["tokens"]
    )
    assert joined.decode() == text
    back = httpx.post(f"{url}/detokenize", json={"tokens": plain["tokens"]}).json()
    assert back == {"content": text}
    bad = httpx.post(f"{url}/detokenize", json={"tokens": [10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == 400
    bad = httpx.post(f"{url}/tokenize", json={"content": 3})
    assert bad.status_code == 400 and "content" in bad.json()["error"]["message"]


def test_slots_show_running_sequences(tiny_tokenizer):
    script = tiny_tokenizer.encode("abc", add_bos=False)
    model = SlowModel(tiny_config(tiny_tokenizer.vocab_size), script, 0.02)
    lm = CodeGemma(model, tiny_tokenizer, name="tiny", speculate=0)
    with running_server(lm, max_active=2) as (url, _):
        idle = httpx.get(f"{url}/slots").json()
        assert [s["is_processing"] for s in idle] == [False, False]
        body = {"prompt": "a b c", "n_predict": 60, "id_slot": 1, "temperature": 0}
        thread = threading.Thread(
            target=httpx.post, args=(f"{url}/completion",), kwargs={"json": body, "timeout": 30}
        )
        thread.start()
        deadline = time.monotonic() + 10
        busy = []
        while time.monotonic() < deadline:
            busy = [s for s in httpx.get(f"{url}/slots").json() if s["is_processing"]]
            if busy and busy[0]["next_token"]["n_decoded"] >= 3:
                break
            time.sleep(0.02)
        thread.join(30)
        assert len(busy) == 1
        slot = busy[0]
        assert slot["state"] == "decode" and slot["client"] == "slot:1"
        assert slot["n_prompt_tokens"] == len(tiny_tokenizer.encode("a b c"))
        assert slot["params"]["n_predict"] == 60
        assert slot["next_token"]["n_remain"] == 60 - slot["next_token"]["n_decoded"]
        after = httpx.get(f"{url}/slots").json()
        assert not any(s["is_processing"] for s in after)


def metric_values(url) -> dict:
    text = httpx.get(f"{url}/metrics").text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + json.dumps(sample.labels, sort_keys=True) * bool(sample.labels)
            values[key] = sample.value
    return values


def test_metrics_count_requests_and_tokens(lm):
    with running_server(lm) as (url, _):
        before = metric_values(url)
        body = {"input_prefix": "def f(x):\n    ", "input_suffix": "\n", "n_predict": 6}
        answers = [
            httpx.post(f"{url}/infill", json={**body, "temperature": 0}, timeout=30).json()
            for _ in range(2)
        ]
        httpx.post(f"{url}/completion", json={"prompt": 1})  # a refusal, counted as a 400
        after = metric_values(url)
    assert before["codegemma_prompt_tokens_total"] == 0
    assert after["codegemma_prompt_tokens_total"] == sum(a["tokens_evaluated"] for a in answers)
    assert after["codegemma_prompt_tokens_cached_total"] == answers[1]["tokens_cached"] > 0
    generated = sum(a["tokens_predicted"] for a in answers)
    assert after["codegemma_generated_tokens_total"] == generated
    assert after["codegemma_time_to_first_token_seconds_count"] == 2
    assert after["codegemma_time_per_output_token_seconds_count"] == 2
    assert after['codegemma_requests_total{"route": "/infill", "status": "200"}'] == 2
    assert after['codegemma_requests_total{"route": "/completion", "status": "400"}'] == 1
    assert after["codegemma_requests_running"] == 0 and after["codegemma_requests_waiting"] == 0


@pytest.mark.parity
def test_openai_models_and_model_by_id(server):
    url, _ = server
    assert client(url).models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError) as caught:
        client(url).models.retrieve("gpt-4")
    assert caught.value.body["code"] == "model_not_found"


@pytest.mark.parity
def test_embeddings_are_normalized_mean_pooled_hidden_states(server, lm):
    url, _ = server
    texts = ["def add(a, b):\n    return a + b\n", "import os"]
    direct = lm.embed(texts)
    assert direct.shape == (2, lm.config.hidden_size)
    # the hidden states are what the (tied) LM head reads: through it they give the model's
    # own logits (the forward pass that is checked against transformers)
    ids = torch.tensor([lm.tokenizer.encode(texts[1])])
    with torch.no_grad():
        hidden = lm.model.hidden_states(ids)[0]  # (T, D)
        logits = lm.model(ids, logits_positions=slice(None))[0]
        assert torch.allclose(lm.model.model.embed_tokens.project(hidden), logits, atol=1e-4)
    pooled = hidden.mean(0)
    assert torch.allclose(direct[1], pooled / pooled.norm(), atol=1e-5)
    answer = client(url).embeddings.create(model="tiny", input=texts)  # base64 on the wire
    got = torch.tensor([d.embedding for d in answer.data])
    assert torch.allclose(got, direct, atol=1e-5)
    assert answer.usage.prompt_tokens == sum(len(lm.tokenizer.encode(t)) for t in texts)
    floats = client(url).embeddings.create(model="tiny", input="import os", encoding_format="float")
    assert torch.allclose(torch.tensor(floats.data[0].embedding), direct[1], atol=1e-5)
    llama = httpx.post(f"{url}/embedding", json={"content": "import os"}).json()
    assert torch.allclose(torch.tensor(llama[0]["embedding"][0]), direct[1], atol=1e-5)
    ollama = httpx.post(f"{url}/api/embed", json={"model": "tiny", "input": texts}).json()
    assert torch.allclose(torch.tensor(ollama["embeddings"]), direct, atol=1e-5)
    assert ollama["prompt_eval_count"] == answer.usage.prompt_tokens


@pytest.mark.parity
def test_embedding_inputs_too_long(server, lm):
    url, _ = server
    long_text = "x = 1\n" * lm.context_length
    with pytest.raises(openai.BadRequestError) as caught:
        client(url).embeddings.create(model="tiny", input=long_text)
    assert "truncate" in caught.value.body["message"]
    cut = httpx.post(f"{url}/api/embed", json={"model": "tiny", "input": long_text}).json()
    assert cut["prompt_eval_count"] == lm.context_length  # Ollama truncates by default
    refused = httpx.post(
        f"{url}/api/embed", json={"model": "tiny", "input": long_text, "truncate": False}
    )
    assert refused.status_code == 400 and isinstance(refused.json()["error"], str)
    bad = httpx.post(f"{url}/v1/embeddings", json={"model": "tiny", "input": "x", "dimensions": 3})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "dimensions"


def test_ollama_tags_and_show_describe_the_real_model(server, lm):
    url, _ = server
    model = httpx.get(f"{url}/api/tags").json()["models"][0]
    count = parameter_count(lm.config)
    assert count == sum(p.numel() for p in lm.model.parameters())  # float weights: all counted
    assert model["details"]["parameter_size"] == f"{count / 1e3:.1f}K"  # a tiny model
    assert [parameter_size(n) for n in (2_506_172_416, 137_400_000)] == ["2.5B", "137.4M"]
    assert model["details"]["quantization_level"] == "F32"
    assert re.fullmatch(r"[0-9a-f]{64}", model["digest"])
    show = httpx.post(f"{url}/api/show", json={"model": "tiny"}).json()
    assert show["model_info"]["general.parameter_count"] == count
    assert "embedding" in show["capabilities"]


def test_keep_alive_zero_unloads_and_the_next_request_loads(tiny_tokenizer):
    loads = []

    def loader():
        loads.append(1)
        return lively_engine(tiny_tokenizer)

    body = {"model": "tiny", "prompt": "def f", "stream": False}
    body["options"] = {"temperature": 0, "num_predict": 4}
    with running_server(lively_engine(tiny_tokenizer), loader=loader) as (url, scheduler):
        assert [m["name"] for m in httpx.get(f"{url}/api/ps").json()["models"]] == ["tiny:latest"]
        first = httpx.post(f"{url}/api/generate", json={**body, "keep_alive": "5m"}).json()
        unload = httpx.post(f"{url}/api/generate", json={"model": "tiny", "keep_alive": 0})
        assert unload.json()["done_reason"] == "unload"
        deadline = time.monotonic() + 5
        while scheduler.loaded and time.monotonic() < deadline:
            time.sleep(0.01)
        assert httpx.get(f"{url}/api/ps").json() == {"models": []}
        again = httpx.post(f"{url}/api/generate", json=body, timeout=30).json()
        assert again["response"] == first["response"] and len(loads) == 1
        assert httpx.get(f"{url}/api/ps").json()["models"][0]["size_vram"] == 0
        bad = httpx.post(f"{url}/api/generate", json={**body, "keep_alive": "soon"})
        assert bad.status_code == 400 and "keep_alive" in bad.json()["error"]


def test_root_greets_ollama_clients_and_serves_the_page_to_browsers(server):
    url, _ = server
    plain = httpx.get(f"{url}/")
    assert plain.text == "Ollama is running" and plain.status_code == 200
    assert httpx.head(f"{url}/").status_code == 200
    page = httpx.get(f"{url}/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.headers["content-type"].startswith("text/html") and "app.js" in page.text
    script = httpx.get(f"{url}/web/app.js")
    assert script.status_code == 200 and "/infill" in script.text
    assert not re.search(r"(src|href)=\"https?://", page.text)  # nothing from elsewhere
    assert httpx.get(f"{url}/web/secret.py").status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "shape"),
    [
        ("GET", "/v1/nope", "openai"),
        ("POST", "/v1/models", "openai"),  # a known path, a wrong method: 405
        ("GET", "/api/nope", "ollama"),
        ("GET", "/nope", "llamacpp"),
    ],
)
def test_unknown_paths_answer_in_the_peers_error_format(server, method, path, shape):
    url, _ = server
    response = httpx.request(method, f"{url}{path}")
    assert response.status_code in (404, 405)
    error = response.json()["error"]
    if shape == "openai":
        assert set(error) == {"message", "type", "param", "code"} and path in error["message"]
    elif shape == "ollama":
        assert isinstance(error, str) and path in error
    else:
        assert error["code"] == response.status_code and path in error["message"]
