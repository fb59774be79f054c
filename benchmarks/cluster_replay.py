"""Cluster replay: four editors typing at once against `codegemma serve` on Ray Serve, with the
affinity router and with Ray's default router, and against the single-process server.

    python benchmarks/cluster_replay.py [--requests 40] [--budget-s 900] [--model DIR]

Each editor re-types one long line of a different standard-library file, as in
`keystroke_replay.py` (one streamed `/infill` every `--every` keystrokes, 2 by default,
greedy, `ignore_eos`, sent one after another): two slide their prefix window, two keep its
start fixed; no editor names itself (no `id_slot`), so routing goes by the prompt's start.
Prefixes of up to 1200 characters (over the 1024 at which the server starts them at a stable
line) and suffixes of up to 120 are fitted into the shipped model's 256-token context; 8 new
tokens.

Runs, each on fresh replicas (cold caches), one local Ray cluster on loopback for all:
`single` (`codegemma serve`, one process, no Ray), `1 replica` (affinity router), `2 replicas,
Ray default` (power of two choices: Serve's own router) and `2 replicas, affinity`; then the
two 2-replica runs again with a small KV cache per replica (`--small-cache-mib`, two editors'
caches: as when many editors share few replicas). Every replica and the single server get one
thread. Reports, over all requests: prompt tokens reused from a cache over prompt tokens
(also leaving out each editor's first request), tokens computed per request, aggregate
requests and generated tokens per second (wall time of the run), and time to first token p50
/ p95 over each editor's requests after its first; plus the routing policy's own cost per
request (`affinity.ranked` with its table, timed alone) and, per run, the median time of a
one-token request whose prompt is cached (the path to the model: its difference between the
single server and one replica is what Ray adds per request); last, both routers side by side
(two applications, one-token requests alternating between them). Appends a section to
BENCHMARKS.md.

Bounded: `--requests` per editor, `--budget-s` seconds in all (each run gets a share of what
is left), `--timeout` per request; everything binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import logging
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import httpx
from keystroke_replay import free_port, infill, machine, pick_line, server, typing_requests

from codegemma.serving.cluster.affinity import Owners, affinity_key, ranked
from codegemma.serving.cluster.options import APP_NAME, ClusterOptions
from codegemma.serving.requests import FimInput, GenerationRequest

REPO = Path(__file__).resolve().parent.parent
EDITORS = (  # (standard-library module, line to start looking from, client style)
    ("shlex", 200, "sliding"),
    ("textwrap", 150, "fixed"),
    ("argparse", 400, "sliding"),
    ("csv", 120, "fixed"),
)
RUNS = {  # name -> replicas, routing, small cache (None: the single-process server)
    "single": None,
    "1 replica": (1, "affinity", False),
    "2 replicas, Ray default": (2, "load", False),
    "2 replicas, affinity": (2, "affinity", False),
    "2 replicas, Ray default, small cache": (2, "load", True),
    "2 replicas, affinity, small cache": (2, "affinity", True),
}


def editor_requests(args) -> list[list[tuple[str, str]]]:
    """Each editor's (prefix, suffix) per request."""
    out = []
    for module, start, style in EDITORS:
        source = Path(__import__(module).__file__).read_text()
        line = pick_line(source.splitlines(keepends=True), start)
        requests = typing_requests(
            source,
            line,
            style,
            every=args.every,
            prefix_chars=args.prefix_chars,
            suffix_chars=args.suffix_chars,
        )
        out.append(requests[: args.requests])
    return out


def replay(url: str, editors: list, args, deadline: float) -> tuple[list[list[dict]], float]:
    """Every editor at once, each request after the previous answer; (records, wall s)."""

    def one(requests):
        records = []
        for prefix, suffix in requests:
            if records and time.monotonic() > deadline:
                break
            records.append(infill(url, prefix, suffix, args.n_predict, args.timeout))
        return records

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(editors)) as pool:
        records = list(pool.map(one, editors))
    return records, time.perf_counter() - started


def hop_ms(url: str, rounds: int = 30) -> float:
    """Median milliseconds of a one-token, non-streamed `/infill` whose prompt is cached: what
    the path to the model costs, nearly without the model."""
    body = {"input_prefix": "def f(x):\n    ", "input_suffix": "\n", "n_predict": 1}
    times = []
    with httpx.Client(timeout=60) as client:
        for _ in range(rounds + 3):  # the first ones fill the cache
            started = time.perf_counter()
            client.post(f"{url}/infill", json={**body, "temperature": 0}).raise_for_status()
            times.append(time.perf_counter() - started)
    return statistics.median(times[3:]) * 1000


def summarize(records: list[list[dict]], wall: float) -> dict:
    every = [r for editor in records for r in editor]
    warm = [r for editor in records for r in editor[1:]]  # each editor's first fills a cache
    ttft = sorted(r["ttft_s"] for r in warm)
    return {
        "requests": len(every),
        "reuse": sum(r["cached"] for r in every) / sum(r["prompt"] for r in every),
        "reuse_warm": sum(r["cached"] for r in warm) / sum(r["prompt"] for r in warm),
        "computed": statistics.mean(r["recomputed"] for r in every),
        "prompt": statistics.mean(r["prompt"] for r in every),
        "requests_per_s": len(every) / wall,
        "tokens_per_s": sum(r["predicted"] for r in every) / wall,
        "ttft_p50": ttft[len(ttft) // 2],
        "ttft_p95": ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))],
    }


def run_single(editors, args, deadline) -> tuple[list, float, float]:
    port = free_port()
    launcher = "from codegemma.cli import main; raise SystemExit(main())"
    command = [sys.executable, "-c", launcher, "serve", "--threads", "1", "--port", str(port)]
    command += ["--host", "127.0.0.1"] + (["--model", str(args.model)] if args.model else [])
    with server(command, port, args.work / "single.log") as url:
        return (*replay(url, editors, args, deadline), hop_ms(url))


def run_cluster(
    replicas: int, routing: str, small: bool, editors, args, deadline
) -> tuple[list, float, float]:
    """One Serve application on the running Ray cluster, deleted afterwards."""
    from ray import serve

    from codegemma.serving.cluster.deployment import build

    options = ClusterOptions(
        model=str(args.model) if args.model else None,
        replicas=replicas,
        routing=routing,
        threads=1,
        cache_mib=args.small_cache_mib if small else ClusterOptions.cache_mib,
    )
    serve.run(build(options), name=APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{args.port}"
    try:
        return (*replay(url, editors, args, deadline), hop_ms(url))
    finally:
        serve.delete(APP_NAME)


def policy_cost_us(replicas: int = 2, keys: int = 20, rounds: int = 20_000) -> float:
    """Microseconds the affinity policy spends per request (key, table, ranking), alone."""
    owners, names = Owners(), [f"replica-{i}" for i in range(replicas)]
    request = GenerationRequest(FimInput("x", ""))  # unnamed: keyed by its prompt's start
    prompts = [list(range(i, i + 200)) for i in range(keys)]
    started = time.perf_counter()
    for n in range(rounds):
        i, now = n % keys, n * 1e-3
        key = affinity_key(request, prompts[i])
        loads = dict.fromkeys(names, n % 3)
        order = ranked(
            key, loads, owner=owners.owner(key, now), keys_held=owners.keys_held(now), imbalance=8
        )
        owners.record(key, order[0], now)
    return (time.perf_counter() - started) / rounds * 1e6


def router_ab(args, rounds: int = 80) -> dict[str, float]:
    """The two routers side by side (two applications, 2 replicas each), one-token requests
    alternating between them: median milliseconds of each (the routers' cost, in one noise)."""
    from ray import serve

    from codegemma.serving.cluster.deployment import build

    times: dict[str, list[float]] = {"affinity": [], "load": []}
    for routing in times:
        options = ClusterOptions(replicas=2, routing=routing, threads=1)
        serve.run(build(options), name=f"ab-{routing}", route_prefix=f"/{routing}")
    body = {"input_prefix": "def f(x):\n    ", "input_suffix": "\n", "n_predict": 1}
    try:
        with httpx.Client(timeout=60) as client:
            for n in range(rounds):
                for routing in sorted(times, reverse=n % 2 == 1):
                    url = f"http://127.0.0.1:{args.port}/{routing}/infill"
                    started = time.perf_counter()
                    client.post(url, json={**body, "temperature": 0}).raise_for_status()
                    times[routing].append(time.perf_counter() - started)
    finally:
        for routing in times:
            serve.delete(f"ab-{routing}")
    return {routing: statistics.median(t[5:]) * 1000 for routing, t in times.items()}


def run_all(args) -> dict[str, dict]:
    import ray
    from ray import serve

    editors = editor_requests(args)
    results = {}
    end = time.monotonic() + args.budget_s
    # Logical CPUs: the A/B's two applications (4 one-thread replicas) fit side by side.
    ray.init(num_cpus=4, include_dashboard=False, logging_level=logging.WARNING)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        names = [name for name in RUNS if name in args.runs]
        for index, name in enumerate(names):
            deadline = time.monotonic() + (end - time.monotonic()) / (len(names) - index)
            print(f"{name}: replaying", file=sys.stderr, flush=True)
            if RUNS[name] is None:
                records, wall, hop = run_single(editors, args, deadline)
            else:
                records, wall, hop = run_cluster(*RUNS[name], editors, args, deadline)
            results[name] = {**summarize(records, wall), "hop_ms": hop}
            print(name, results[name], file=sys.stderr, flush=True)
        results["router A/B"] = router_ab(args)
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


def render(args, results: dict[str, dict], cost_us: float) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/cluster_replay.py " + shlex.join(
        a for a in sys.argv[1:] if a != "--no-append"
    )
    lines = [
        f"## {when} — cluster replay: 4 editors on Ray Serve replicas ({machine()})",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"{args.model or 'The shipped model'}, one thread per replica (and for the single "
        f"server); 4 editors typing at once (2 sliding, 2 fixed prefix windows, no `id_slot`), "
        f"one streamed `/infill` every {args.every} keystrokes, up to {args.requests} each, "
        f"prefix <= {args.prefix_chars} chars, "
        f"suffix <= {args.suffix_chars}, {args.n_predict} tokens; 'small cache': "
        f"`--cache-mib {args.small_cache_mib}` per replica. Reuse: prompt tokens taken from a "
        "cache over prompt tokens (all requests; 'warm': each editor's first left out). TTFT "
        "over each editor's requests after its first. '1-token request': median of a "
        "non-streamed one-token `/infill` with its prompt cached, once the replay is over "
        "(the path to the model, nearly without the model).",
        "",
        "| run | requests | reuse | reuse warm | computed tokens / request | prompt tokens | "
        "requests/s | tokens/s | TTFT p50 ms | TTFT p95 ms | 1-token request ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ab = results.pop("router A/B")
    for name, s in results.items():
        lines.append(
            f"| {name} | {s['requests']} | {s['reuse']:.3f} | {s['reuse_warm']:.3f} | "
            f"{s['computed']:.1f} | {s['prompt']:.0f} | {s['requests_per_s']:.2f} | "
            f"{s['tokens_per_s']:.1f} | {s['ttft_p50'] * 1000:.0f} | "
            f"{s['ttft_p95'] * 1000:.0f} | {s['hop_ms']:.1f} |"
        )
    lines += [
        "",
        f"Routers side by side (2 replicas each, one-token requests alternating): affinity "
        f"{ab['affinity']:.1f} ms, Ray default {ab['load']:.1f} ms (medians). Routing policy "
        f"alone: {cost_us:.1f} µs per request (key, table, ranking). Load "
        f"average (1 min) at the start and end: {args.load_before:.1f} / "
        f"{os.getloadavg()[0]:.1f}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="checkpoint (default: the shipped model)")
    parser.add_argument("--requests", type=int, default=40, help="per editor, at most")
    parser.add_argument("--every", type=int, default=2, help="keystrokes per request")
    parser.add_argument("--prefix-chars", type=int, default=1200)
    parser.add_argument("--suffix-chars", type=int, default=120)
    parser.add_argument("--n-predict", type=int, default=8)
    parser.add_argument(
        "--small-cache-mib",
        type=int,
        default=3,
        help="the small-cache runs' --cache-mib (3: two of the shipped model's caches)",
    )
    parser.add_argument("--budget-s", type=float, default=900, help="seconds for all runs")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per request")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/cluster-replay"))
    parser.add_argument("--no-append", action="store_true", help="do not add to BENCHMARKS.md")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.port = free_port()
    args.load_before = os.getloadavg()[0]  # the machine is shared: say how busy it was
    cost = policy_cost_us()
    results = run_all(args)
    report = render(args, results, cost)
    print(report)
    if not args.no_append:
        with (REPO / "BENCHMARKS.md").open("a") as out:
            out.write("\n" + report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
