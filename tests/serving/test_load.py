"""A bounded loopback load test: 32 concurrent streaming clients, 64 requests in all, over the
three wire formats. Every answer must equal the same request run alone; p50/p95 are reported."""

import asyncio
import json
import statistics
import time

import httpx
import pytest
from serving_helpers import lively_engine, running_server

CLIENTS = 32
REQUESTS_PER_CLIENT = 2
VARIANTS = 16


def request_for(variant: int) -> tuple[str, dict]:
    """(path, body) of one of the distinct requests, cycling through the three formats."""
    prefix = f"def handler_{variant}(event):\n    value = event[{variant}]\n    "
    suffix = f"\n    return value + {variant}\n"
    kind = variant % 3
    if kind == 0:
        body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 12, "temperature": 0}
        return "/infill", body
    if kind == 1:
        body = {"model": "tiny", "prompt": prefix, "suffix": suffix, "max_tokens": 12}
        return "/v1/completions", {**body, "temperature": 0}
    options = {"temperature": 0, "num_predict": 12}
    return "/api/generate", {
        "model": "tiny",
        "prompt": prefix,
        "suffix": suffix,
        "options": options,
    }


async def stream_text(client: httpx.AsyncClient, path: str, body: dict) -> str:
    """The streamed text of one request, in its format."""
    pieces = []
    async with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line:
                continue
            if path == "/api/generate":
                pieces.append(json.loads(line)["response"])
            elif line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[6:])
                if path == "/infill":
                    pieces.append(event["content"])
                else:
                    pieces.append(event["choices"][0]["text"])
    return "".join(pieces)


@pytest.fixture(scope="module")
def lm(tiny_tokenizer):
    return lively_engine(tiny_tokenizer, seed=2)


def test_32_streaming_clients(lm):
    async def run(url):
        limits = httpx.Limits(max_connections=CLIENTS * 2)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            alone = {}
            for variant in range(VARIANTS):
                alone[variant] = await stream_text(client, *request_for(variant))
            latencies, mismatches = [], []

            async def one_client(index: int) -> None:
                for turn in range(REQUESTS_PER_CLIENT):
                    variant = (index * REQUESTS_PER_CLIENT + turn) % VARIANTS
                    started = time.perf_counter()
                    text = await stream_text(client, *request_for(variant))
                    latencies.append(time.perf_counter() - started)
                    if text != alone[variant]:
                        mismatches.append((variant, text, alone[variant]))

            await asyncio.gather(*(one_client(i) for i in range(CLIENTS)))
            return alone, latencies, mismatches

    with running_server(lm, max_active=8) as (url, scheduler):
        alone, latencies, mismatches = asyncio.run(asyncio.wait_for(run(url), timeout=120))
        assert scheduler.load == (0, 0)
    assert any(alone.values())  # the model says something, so mixing would show
    assert len(set(alone.values())) > VARIANTS // 2
    assert not mismatches
    assert len(latencies) == CLIENTS * REQUESTS_PER_CLIENT
    cuts = statistics.quantiles(latencies, n=20)
    p50, p95 = statistics.median(latencies), cuts[18]
    count = len(latencies)
    print(f"\nload: {count} streamed requests, p50 {p50 * 1e3:.0f} ms, p95 {p95 * 1e3:.0f} ms")
    assert p95 < 60
