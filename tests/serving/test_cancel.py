"""Cancellation: a client that disconnects, or a newer request for the same slot, stops the old
generation within one decode step."""

import contextlib
import json
import threading
import time

import httpx
import pytest
from serving_helpers import SlowModel, running_server
from tiny_models import tiny_config

from codegemma.engine import CodeGemma

DELAY = 0.02  # seconds per forward pass


@contextlib.contextmanager
def slow_server(tokenizer, **options):
    """A server of a model that takes DELAY per forward pass: (url, scheduler, model)."""
    script = tokenizer.encode("abc", add_bos=False)  # repeats its last token: never stops
    model = SlowModel(tiny_config(tokenizer.vocab_size), script, DELAY)
    lm = CodeGemma(model, tokenizer, name="tiny", speculate=0)
    with running_server(lm, **options) as (url, scheduler):
        yield url, scheduler, model


@pytest.fixture
def slow(tiny_tokenizer):
    with slow_server(tiny_tokenizer) as served:
        yield served


def wait_idle(scheduler, seconds=2.0):
    deadline = time.monotonic() + seconds
    while scheduler.load != (0, 0) and time.monotonic() < deadline:
        time.sleep(DELAY / 4)
    return scheduler.load == (0, 0)


def steps_stay(model, seconds=0.3):
    before = model.steps
    time.sleep(seconds)
    return model.steps == before


def test_disconnect_mid_stream_stops_generation(slow):
    url, scheduler, model = slow
    body = {"input_prefix": "x", "input_suffix": "", "n_predict": 400, "stream": True}
    with httpx.stream("POST", f"{url}/infill", json=body, timeout=30) as response:
        lines = response.iter_lines()
        received = [line for line, _ in zip(lines, range(6), strict=False) if line]
        assert received and json.loads(received[0][6:])["stop"] is False
        started = time.monotonic()
    # The connection is closed here; the job must end within about one step.
    assert wait_idle(scheduler)
    assert time.monotonic() - started < 1.0
    assert steps_stay(model)
    assert model.steps < 100  # far from the 400 tokens asked for


def test_disconnect_while_waiting_for_a_whole_answer(slow):
    url, scheduler, model = slow
    body = {"model": "tiny", "prompt": "x", "max_tokens": 400}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=body, timeout=0.3)
    assert wait_idle(scheduler)
    assert steps_stay(model)
    assert model.steps < 100


def test_newer_request_for_the_same_slot_supersedes(slow):
    url, scheduler, model = slow
    first_events = []

    def first():
        body = {"prompt": "a", "n_predict": 400, "stream": True, "id_slot": 0}
        with httpx.stream("POST", f"{url}/completion", json=body, timeout=30) as response:
            for line in response.iter_lines():
                if line:
                    first_events.append(json.loads(line[6:]))

    thread = threading.Thread(target=first)
    thread.start()
    while len(first_events) < 3:
        time.sleep(DELAY)
    second = httpx.post(
        f"{url}/completion", json={"prompt": "b", "n_predict": 5, "id_slot": 0}, timeout=30
    )
    thread.join(5)
    assert not thread.is_alive()
    assert second.json()["tokens_predicted"] == 5
    last = first_events[-1]
    assert last["stop"] is True and last["stop_type"] == "none"
    assert last["tokens_predicted"] < 100


def test_other_slots_are_not_superseded(slow):
    url, _, _ = slow
    results = {}

    def ask(slot):
        body = {"prompt": "a", "n_predict": 8, "id_slot": slot}
        results[slot] = httpx.post(f"{url}/completion", json=body, timeout=30).json()

    threads = [threading.Thread(target=ask, args=(slot,)) for slot in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert [results[s]["tokens_predicted"] for s in (1, 2)] == [8, 8]


def test_disconnect_during_prompt_evaluation_stops_it(tiny_tokenizer):
    """No text has been sent yet (the prompt is still being evaluated, a chunk per step), so
    only the connection's end says the client is gone."""
    prompt = " ".join(f"w{i}" for i in range(120))
    chunks = -(-len(tiny_tokenizer.encode(prompt)) // 2)
    with slow_server(tiny_tokenizer, prefill_chunk=2) as (url, scheduler, model):
        body = {"prompt": prompt, "n_predict": 8, "stream": True}
        with httpx.stream("POST", f"{url}/completion", json=body, timeout=30) as response:
            assert response.status_code == 200
            time.sleep(0.2)
        assert wait_idle(scheduler)
        assert steps_stay(model)
    assert chunks > 60 and model.steps < chunks / 2


def test_a_queued_stream_whose_client_left_never_runs(tiny_tokenizer):
    marker = tiny_tokenizer.encode("zebra", add_bos=False)[0]
    with slow_server(tiny_tokenizer, max_active=1) as (url, scheduler, model):
        busy = threading.Thread(
            target=httpx.post,
            args=(f"{url}/completion",),
            kwargs={"json": {"prompt": "a", "n_predict": 30}, "timeout": 30},
        )
        busy.start()
        while model.steps < 2:
            time.sleep(DELAY / 4)
        body = {"prompt": "zebra", "n_predict": 8, "stream": True}
        with httpx.stream("POST", f"{url}/completion", json=body, timeout=30) as response:
            assert response.status_code == 200
            assert scheduler.load == (1, 1)  # waiting behind the busy request
        busy.join(10)
        assert wait_idle(scheduler)
    assert not any(marker in ids for ids in model.inputs)


def test_openai_user_supersedes_completions_but_not_chats(slow):
    url, _, model = slow
    answers = {}

    def ask(key, path, body):
        body = {"model": "tiny", "user": "u", "temperature": 0, **body}
        answers[key] = httpx.post(f"{url}{path}", json=body, timeout=30).json()

    def overlapping(first, second):
        before = model.steps
        thread = threading.Thread(target=ask, args=("first", *first))
        thread.start()
        while model.steps < before + 3:
            time.sleep(DELAY / 4)
        ask("second", *second)
        thread.join(10)
        return answers["first"]["usage"]["completion_tokens"]

    chat = {"messages": [{"role": "user", "content": "hi"}]}
    tokens = overlapping(
        ("/v1/chat/completions", {**chat, "max_tokens": 30}),
        ("/v1/chat/completions", {**chat, "max_tokens": 3}),
    )
    assert tokens == 30  # both conversations ran to the end
    tokens = overlapping(
        ("/v1/completions", {"prompt": "a", "max_tokens": 400}),
        ("/v1/completions", {"prompt": "b", "max_tokens": 3}),
    )
    assert tokens < 100 and answers["second"]["usage"]["completion_tokens"] == 3
