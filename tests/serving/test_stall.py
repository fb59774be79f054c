"""No request can stall the others: a FIM request of 3000 lines either side of the cursor is
fitted in time linear in its size, off the model's thread, while another client's short
completion goes on (bounded loopback test on the shipped default model)."""

import argparse
import threading
import time
from pathlib import Path

import httpx
from serving_helpers import running_server

import codegemma

SOURCE = Path(argparse.__file__).read_text().splitlines(keepends=True)


def lines(count: int, shift: int) -> str:
    return "".join(SOURCE[(i + shift) % len(SOURCE)] for i in range(count))


def test_a_huge_fim_request_stalls_nobody():
    lm = codegemma.load()
    big_body = {
        "input_prefix": lines(3000, 0),
        "input_suffix": lines(3000, 1234),
        "n_predict": 8,
        "temperature": 0,
    }
    small_body = {"prompt": "def add(a, b):\n", "n_predict": 8, "temperature": 0}
    with running_server(lm, threads=2) as (url, _):
        httpx.post(f"{url}/completion", json=small_body, timeout=30)  # warm up
        big = {}

        def send_big():
            started = time.perf_counter()
            big["answer"] = httpx.post(f"{url}/infill", json=big_body, timeout=30)
            big["seconds"] = time.perf_counter() - started

        sender = threading.Thread(target=send_big)
        sender.start()
        time.sleep(0.05)  # the big body is on its way or being fitted
        started = time.perf_counter()
        small = httpx.post(f"{url}/completion", json=small_body, timeout=30)
        small_seconds = time.perf_counter() - started
        sender.join(30)
    assert small.status_code == 200 and small.json()["tokens_predicted"] == 8
    assert small_seconds < 1.0, small_seconds
    answer = big["answer"].json()
    assert big["answer"].status_code == 200 and answer["truncated"] is True
    assert answer["tokens_evaluated"] <= lm.context_length - 8
    assert big["seconds"] < 2.0, big["seconds"]
