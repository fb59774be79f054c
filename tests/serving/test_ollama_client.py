"""The Ollama endpoints through Ollama's own Python client (`ollama`), whose pydantic models
check the shapes of our answers: generate (FIM, streamed), chat, embed, list, ps, show and
keep_alive 0."""

import time

import ollama
import pytest
import torch
from serving_helpers import lively_engine, running_server

pytestmark = pytest.mark.parity  # checked against another library

PREFIX = "class Cache:\n    def get(self, key):\n        "
SUFFIX = "\n        return None\n"
OPTIONS = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def lm(tiny_tokenizer):
    return lively_engine(tiny_tokenizer)


@pytest.fixture(scope="module")
def served(lm, tiny_tokenizer):
    loader = lambda: lively_engine(tiny_tokenizer)  # noqa: E731  (the same weights again)
    with running_server(lm, loader=loader) as (url, scheduler):
        yield ollama.Client(host=url), scheduler


def test_generate_fills_in_the_middle_whole_and_streamed(served, lm):
    client, _ = served
    expected = lm.complete(PREFIX, SUFFIX, mode="spm", max_new_tokens=12).text
    whole = client.generate(model="tiny", prompt=PREFIX, suffix=SUFFIX, options=OPTIONS)
    assert whole.response == expected and whole.done and whole.done_reason in ("stop", "length")
    assert whole.eval_count >= 1 and whole.prompt_eval_count >= 1
    parts = list(
        client.generate(model="tiny", prompt=PREFIX, suffix=SUFFIX, options=OPTIONS, stream=True)
    )
    assert "".join(p.response for p in parts) == expected and parts[-1].done


def test_chat_and_embed(served, lm):
    client, _ = served
    messages = [{"role": "user", "content": "hello"}]
    answer = client.chat(model="tiny", messages=messages, options=OPTIONS)
    assert answer.message.content == lm.chat(messages, max_new_tokens=12).text
    texts = ["import os", "def f(x):\n    return x\n"]
    embedded = client.embed(model="tiny", input=texts)
    assert torch.allclose(torch.tensor(embedded.embeddings), lm.embed(texts), atol=1e-5)


def test_list_show_and_ps_parse(served, lm):
    client, _ = served
    (model,) = client.list().models
    assert model.model == "tiny:latest" and len(model.digest) == 64
    assert model.details.family == "gemma" and model.details.quantization_level == "F32"
    shown = client.show("tiny")
    assert shown.modelinfo["gemma.context_length"] == lm.context_length
    assert "insert" in shown.capabilities
    assert [m.model for m in client.ps().models] == ["tiny:latest"]


def test_keep_alive_zero_unloads(served, lm):
    client, scheduler = served
    done = client.generate(model="tiny", keep_alive=0)
    assert done.done_reason == "unload"
    deadline = time.monotonic() + 5
    while scheduler.loaded and time.monotonic() < deadline:  # it unloads once idle
        time.sleep(0.01)
    assert client.ps().models == []
    again = client.generate(model="tiny", prompt=PREFIX, suffix=SUFFIX, options=OPTIONS)
    assert again.response == lm.complete(PREFIX, SUFFIX, mode="spm", max_new_tokens=12).text
    assert [m.model for m in client.ps().models] == ["tiny:latest"]
