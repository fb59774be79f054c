"""Prometheus metrics of one app (`GET /metrics`), in a registry of its own (no global state).

Counters of requests (by route and status) and of tokens (prompt, reused from the cache,
computed, generated), gauges of the scheduler's load read at scrape time, and histograms of
time to first token and of time per generated token.
"""

from __future__ import annotations

from collections.abc import Callable

# prometheus-client: part of the `serve` extra, like fastapi (this module is only imported by
# the server).
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from codegemma.serving.results import Result

FIRST_TOKEN_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The server's metrics; `load` gives (requests running, requests waiting) when scraped."""

    def __init__(self, load: Callable[[], tuple[int, int]]) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "codegemma_requests", "HTTP requests answered", ["route", "status"], registry=registry
        )
        self.prompt_tokens = Counter(
            "codegemma_prompt_tokens", "Prompt tokens of finished requests", registry=registry
        )
        self.cached_tokens = Counter(
            "codegemma_prompt_tokens_cached",
            "Prompt tokens reused from the prefix cache (not computed)",
            registry=registry,
        )
        self.generated_tokens = Counter(
            "codegemma_generated_tokens", "Tokens generated", registry=registry
        )
        self.cancelled = Counter(
            "codegemma_cancelled",
            "Candidates cancelled (superseded or abandoned)",
            registry=registry,
        )
        running = Gauge("codegemma_requests_running", "Sequences in the batch", registry=registry)
        running.set_function(lambda: load()[0])
        waiting = Gauge("codegemma_requests_waiting", "Sequences queued", registry=registry)
        waiting.set_function(lambda: load()[1])
        self.first_token = Histogram(
            "codegemma_time_to_first_token_seconds",
            "From arrival to the first generated token (queue and prompt)",
            buckets=FIRST_TOKEN_BUCKETS,
            registry=registry,
        )
        self.per_token = Histogram(
            "codegemma_time_per_output_token_seconds",
            "Mean time between generated tokens, per request",
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )

    def count(self, route: str, status: int) -> None:
        """One HTTP request answered (`route`: the route's path, or "other")."""
        self.requests.labels(route=route, status=str(status)).inc()

    def observe(self, results: list[Result]) -> None:
        """The candidates of one finished generation request."""
        first = results[0]
        self.prompt_tokens.inc(first.prompt_tokens)
        self.cached_tokens.inc(first.cached_tokens)
        for result in results:
            self.generated_tokens.inc(result.completion_tokens)
            if result.finish_reason == "cancelled":
                self.cancelled.inc()
            if result.completion_tokens:
                self.first_token.observe((result.queue_ms + result.prompt_ms) / 1000)
            if result.completion_tokens > 1:
                gaps = result.completion_tokens - 1
                self.per_token.observe(result.generation_ms / 1000 / gaps)

    def render(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)
