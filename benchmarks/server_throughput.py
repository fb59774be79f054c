"""Server throughput: many clients at once against our server and llama-server, same weights.

    bash benchmarks/build_llama_cpp.sh native          # llama-server, built once (or avx2)
    python benchmarks/speed.py --skip transformers      # writes the checkpoints it reuses
    python benchmarks/server_throughput.py [--work /tmp/codegemma-bench/codegemma-2b]
        [--bits 4,8] [--clients 8] [--threads 2] [--isa native|avx2] [--budget-s 2400]

For each precision (our int4 / int8 checkpoint against the GGUF Q4_0 / Q8_0 file of the same
random CodeGemma-2B weights), each server runs alone on loopback: ours with
`--max-active CLIENTS`, llama-server with `-np CLIENTS` (continuous batching, its default).
Two workloads, greedy with `ignore_eos` (random weights would stop anywhere), streamed, no
speculation on either side (random weights repeat themselves, which drafts would exploit):
an editor mix (each request a ~250-token slice of a real source file, 48 new tokens) and a
decode-heavy one (a few lines, ~20 tokens, 96 new tokens). Each workload runs with one client,
then with CLIENTS clients at once, each sending `--requests` requests one after another.
Reports aggregate generated tokens per second (all tokens / wall time), p50 / p95 time to
first token, and our ratios to the peer; appends the table to BENCHMARKS.md.

Bounded: `--budget-s` seconds in all, `--timeout` per request; every server binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import httpx
from keystroke_replay import free_port, server
from speed import AVX2_ENV, isa_environment, llama_build_dir, machine, publish

HERE = Path(__file__).resolve().parent
WORKLOADS = {  # name -> (prompt characters, new tokens)
    "editor mix": (400, 48),  # ~250 tokens of code with the synthetic 256k vocabulary
    "decode-heavy": (35, 96),  # a line or two, ~20 tokens
}


def prompts(source: str, chars: int, count: int) -> list[str]:
    """`count` distinct slices of `source`, `chars` characters each, starting at lines."""
    lines = source.splitlines(keepends=True)
    out, line = [], 0
    while len(out) < count:
        text = "".join(lines[line : line + 200])[:chars]
        out.append(text)
        line = (line + 37) % max(1, len(lines) - 200)
    return out


def complete(url: str, prompt: str, n_predict: int, timeout: float) -> dict:
    """One streamed /completion: seconds to the first text, in total, and tokens generated."""
    body = {
        "prompt": prompt,
        "n_predict": n_predict,
        "temperature": 0,
        "top_k": 1,
        "ignore_eos": True,
        "cache_prompt": False,  # every request computes its prompt, on both servers
        "stream": True,
    }
    started = time.perf_counter()
    first, final = None, {}
    with httpx.stream("POST", f"{url}/completion", json=body, timeout=timeout) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if first is None and event.get("content"):
                first = time.perf_counter() - started
            if event.get("stop"):
                final = event
    total = time.perf_counter() - started
    return {
        "ttft_s": first if first is not None else total,
        "total_s": total,
        "predicted": final.get("tokens_predicted") or final.get("timings", {}).get("predicted_n"),
        "prompt_tokens": final.get("tokens_evaluated"),
    }


def run_clients(url: str, texts: list[str], clients: int, per_client: int, args, n_predict):
    """`clients` threads, each sending `per_client` requests in turn: records and wall time."""

    def client(index: int) -> list[dict]:
        out = []
        for turn in range(per_client):
            text = texts[(index * per_client + turn) % len(texts)]
            out.append(complete(url, text, n_predict, args.timeout))
        return out

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        records = [r for rs in pool.map(client, range(clients)) for r in rs]
    return records, time.perf_counter() - started


def figures(records: list[dict], wall: float) -> dict:
    ttft = sorted(r["ttft_s"] for r in records)
    p95 = ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))]
    generated = sum(r["predicted"] or 0 for r in records)
    prompt = [r["prompt_tokens"] for r in records if r.get("prompt_tokens")]
    return {
        "requests": len(records),
        "tok_s": generated / wall,
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p95_s": p95,
        "prompt_tokens": statistics.median(prompt) if prompt else None,
        "generated": generated,
        "wall_s": wall,
    }


def servers(args, bits: int, llama_bin: Path | None) -> dict[str, list[str]]:
    """Name -> command line taking a port (appended), loopback only."""
    ours = [sys.executable, "-c", "from codegemma.cli import main; raise SystemExit(main())"]
    ours += ["serve", "--model", str(args.work / f"int{bits}"), "--threads", str(args.threads)]
    ours += ["--max-active", str(args.clients), "--host", "127.0.0.1", "--log-level", "warning"]
    ours += ["--speculate", "0"]  # random weights repeat themselves; the peer drafts nothing
    out = {f"codegemma int{bits}": ours}
    if llama_bin is not None:
        gguf = args.work / f"model-q{bits}_0.gguf"
        peer = [str(llama_bin / "llama-server"), "-m", str(gguf), "-t", str(args.threads)]
        peer += ["-tb", str(args.threads), "-np", str(args.clients), "--host", "127.0.0.1"]
        peer += ["-c", str(args.clients * 1024)]  # 1024 tokens per slot
        out[f"llama-server Q{bits}_0"] = peer
    return out


def measure(args, env, llama_bin) -> dict:
    source = Path(args.source).read_text()
    results: dict = {}
    end = time.monotonic() + args.budget_s
    for bits in args.bits:
        for name, command in servers(args, bits, llama_bin).items():
            if time.monotonic() > end:
                print(f"{name}: skipped, the time budget is spent", file=sys.stderr)
                continue
            port = free_port()
            log = args.log_dir / f"{name.split()[0]}.log"
            with server([*command, "--port", str(port)], port, log, env=env) as url:
                complete(url, "def warm_up():\n", 4, args.timeout)
                for workload, (chars, n_predict) in WORKLOADS.items():
                    texts = prompts(source, chars, args.clients * args.requests)
                    for clients in (1, args.clients):
                        per_client = args.requests if clients > 1 else max(2, args.requests)
                        records, wall = run_clients(
                            url, texts, clients, per_client, args, n_predict
                        )
                        row = figures(records, wall)
                        results.setdefault(f"int{bits}", {}).setdefault(workload, {}).setdefault(
                            name, {}
                        )[clients] = row
                        print(name, workload, clients, json.dumps(row), file=sys.stderr, flush=True)
            (args.log_dir / "results.json").write_text(json.dumps(results, indent=1))
    return results


def render(args, results: dict) -> str:
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    isa = (
        "AVX2 only, emulated (" + ", ".join(f"{k}={v}" for k, v in AVX2_ENV.items()) + ")"
        if args.isa == "avx2"
        else "this CPU (native builds)"
    )
    command = "python benchmarks/server_throughput.py " + shlex.join(
        a for a in sys.argv[1:] if a != "--no-append"
    )
    lines = [
        f"\n## {when} — server throughput, {args.clients} clients ({args.threads} threads)\n",
        f"Machine: {machine()}. CPU class: {isa}. Command: `{command}`. Greedy, ignore_eos, "
        "streamed /completion, no prompt cache; 'x peer' is ours / llama-server's tok/s.\n",
        "| bits | workload | server | clients | requests | prompt tok | gen tok/s | "
        "TTFT p50 s | TTFT p95 s | x peer | x our 1 client |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for bits, by_workload in results.items():
        for workload, by_server in by_workload.items():
            peer = next((v for k, v in by_server.items() if k.startswith("llama")), {})
            ours = next((v for k, v in by_server.items() if k.startswith("codegemma")), {})
            for name, by_clients in by_server.items():
                for clients, row in by_clients.items():
                    theirs = peer.get(clients, {}).get("tok_s")
                    single = ours.get(1, {}).get("tok_s") if name.startswith("codegemma") else None
                    ratio = (
                        f"{row['tok_s'] / theirs:.2f}x"
                        if theirs
                        and name != next((k for k in by_server if k.startswith("llama")), None)
                        else "-"
                    )
                    vs_one = f"{row['tok_s'] / single:.2f}x" if single else "-"
                    lines.append(
                        f"| {bits} | {workload} | {name} | {clients} | {row['requests']} | "
                        f"{row['prompt_tokens'] or '-'} | {row['tok_s']:.2f} | "
                        f"{row['ttft_p50_s']:.2f} | {row['ttft_p95_s']:.2f} | {ratio} | {vs_one} |"
                    )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/codegemma-bench/codegemma-2b"))
    parser.add_argument("--bits", type=lambda s: [int(b) for b in s.split(",")], default=[4, 8])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1, help="requests per client, in turn")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--isa", choices=("native", "avx2"), default="native")
    parser.add_argument("--source", default=str(Path(json.__file__).parent / "decoder.py"))
    parser.add_argument("--budget-s", type=float, default=2400)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/server-throughput"))
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    llama_bin = None if args.skip_peer else llama_build_dir(args.isa)
    env = isa_environment(args.isa, None)
    results = measure(args, env, llama_bin)
    publish(render(args, results), append=not args.no_append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
