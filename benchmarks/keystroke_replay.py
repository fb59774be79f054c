"""Keystroke replay: an editor re-types one line of a real source file against two servers.

    bash benchmarks/build_llama_server.sh       # the peer, built once into a cache directory
    codegemma convert HF_DIR model-q8_0.gguf --to gguf --type q8_0
    python benchmarks/keystroke_replay.py --model INT8_DIR --gguf model-q8_0.gguf \
        --llama-server PATH [--source FILE] [--line N] [--threads 2] [--budget-s 1080]

One `/infill` request every 4 keystrokes (prefix up to 3000 characters, suffix up to 1000,
16 new tokens, greedy, streamed), sent one after another as an editor does, for two client
styles: one that slides its prefix window (the last 3000 characters before the cursor, as
editor plugins do) and one that keeps the window's start fixed. Each server runs alone on the
machine, restarted for each style so no style inherits the other's cache, and binds loopback
only. Reports time to first streamed token and total latency (median and p90 over the
requests after the first), and prompt tokens recomputed per request; then times the engine's
own decode step (no server) at the replay's prompt length, which a served token should cost;
prints a table with ratios to this server and appends it to BENCHMARKS.md.

Bounded: at most one request per 4 characters of the line (or `--max-requests`) per run, and
`--budget-s` seconds in all: each run (server start included) gets a share of what is left
when it starts (a peer three times ours), checked before each request, so a run that ends
early leaves its time to the later ones; a request still in flight then finishes (it is
bounded by `--timeout`). Our server replays the keystrokes the peer got through.

`--isa avx2` runs both servers as on a CPU with AVX2/FMA/F16C and no AVX-512 (our kernels
built for haswell, PyTorch limited by ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA; give
`--llama-server` a llama.cpp built with GGML_NATIVE=OFF GGML_AVX2=ON GGML_AVX512=OFF).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from speed import AVX2_ENV, checkout_environment, isa_environment

from codegemma.cpu import cpu_model

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STYLES = ("sliding", "fixed")
OURS = "codegemma"


def pick_line(lines: list[str], start: int, min_length: int = 40) -> int:
    """The first line at or after `start` (0-based) with enough code (indentation aside)."""
    for index in range(start, len(lines)):
        if len(lines[index].strip()) >= min_length:
            return index
    raise SystemExit(f"no line of {min_length}+ characters after line {start + 1}")


def typing_requests(
    source: str,
    line: int,
    style: str,
    *,
    every: int = 4,
    prefix_chars: int = 3000,
    suffix_chars: int = 1000,
) -> list[tuple[str, str]]:
    """(prefix, suffix) of each request while line `line` (0-based) is typed again.

    The line is deleted and re-typed; text after the cursor is the rest of the file. A sliding
    client sends the last `prefix_chars` before the cursor; a fixed one keeps the start the
    window had at the first request.
    """
    lines = source.splitlines(keepends=True)
    before, text = "".join(lines[:line]), lines[line].rstrip("\n")
    after = "\n" + "".join(lines[line + 1 :])
    suffix = after[:suffix_chars]
    cuts = list(range(every, len(text), every)) + [len(text)]
    fixed_start = max(0, len(before) + cuts[0] - prefix_chars)
    out = []
    for typed in cuts:
        prefix = before + text[:typed]
        start = max(0, len(prefix) - prefix_chars) if style == "sliding" else fixed_start
        out.append((prefix[start:], suffix))
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(command: list[str], port: int, log: Path, env=None, timeout: float = 600):
    """Run a server process until the block ends; waits for its /health."""
    print("$", shlex.join(command), file=sys.stderr)
    with log.open("ab") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"server exited with {process.returncode}; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            raise SystemExit(f"server not healthy after {timeout} s; see {log}")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def infill(url: str, prefix: str, suffix: str, n_predict: int, timeout: float) -> dict:
    """One streamed /infill request: seconds to the first text and in total, token counts."""
    body = {
        "input_prefix": prefix,
        "input_suffix": suffix,
        "n_predict": n_predict,
        "temperature": 0,
        "top_k": 1,
        "cache_prompt": True,
        "ignore_eos": True,  # random weights: both servers generate all the tokens asked for
        "stream": True,
    }
    started = time.perf_counter()
    first, final = None, {}
    with httpx.stream("POST", f"{url}/infill", json=body, timeout=timeout) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if first is None and (event.get("content") or event.get("stop")):
                first = time.perf_counter() - started
            if event.get("stop"):
                final = event
    total = time.perf_counter() - started
    timings = final.get("timings", {})
    return {
        "ttft_s": first if first is not None else total,
        "total_s": total,
        "prompt": final.get("tokens_evaluated"),
        "recomputed": timings.get("prompt_n"),
        "cached": timings.get("cache_n", final.get("tokens_cached")),
        "predicted": timings.get("predicted_n"),
        "truncated": final.get("truncated"),
        # client-side time per token after the first, and what the server says it spent
        "per_token_ms": (total - (first or total)) * 1000 / max(1, n_predict - 1),
        "server_prompt_ms": timings.get("prompt_ms"),
        "server_token_ms": timings.get("predicted_per_token_ms"),
        "drafted": timings.get("draft_n"),  # speculation: tokens drafted and checked
        "accepted": timings.get("draft_n_accepted"),
    }


def summarize(records: list[dict]) -> dict:
    """Median and p90 over the requests after the first (the first fills an empty cache)."""
    warm = records[1:] or records

    def stats(key: str) -> tuple[float, float]:
        values = sorted(r[key] for r in warm)
        p90 = values[min(len(values) - 1, round(0.9 * (len(values) - 1)))]
        return statistics.median(values), p90

    def median(key: str) -> float | None:
        values = [r[key] for r in warm if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {
        "requests": len(records),
        "first_ttft_s": records[0]["ttft_s"],
        "ttft_s": stats("ttft_s"),
        "total_s": stats("total_s"),
        "recomputed": median("recomputed"),
        "prompt": median("prompt"),
        "per_token_ms": median("per_token_ms"),
        "server_prompt_ms": median("server_prompt_ms"),
        "server_token_ms": median("server_token_ms"),
        "drafted": sum(r.get("drafted") or 0 for r in warm),
        "accepted": sum(r.get("accepted") or 0 for r in warm),
    }


@dataclasses.dataclass(frozen=True)
class Engine:
    """A server to replay against: its command line for a port, and whether it is a peer."""

    command: Callable[[int], list[str]]
    peer: bool
    env: dict[str, str] | None = None


def engines(args) -> dict[str, Engine]:
    """Name -> server, peers first (loopback only)."""
    out = {}
    base = isa_environment(args.isa, None)
    if args.llama_server:
        peer = [str(args.llama_server), "-m", str(args.gguf), "-t", str(args.threads)]
        peer += ["-tb", str(args.threads), "-c", str(args.context), "--host", "127.0.0.1"]
        peer += shlex.split(args.peer_args)
        out["llama-server"] = Engine(lambda port: [*peer, "--port", str(port)], peer=True, env=base)
        if args.peer_spm:
            spm = [*peer, "--spm-infill"]
            out["llama-server --spm-infill"] = Engine(
                lambda port: [*spm, "--port", str(port)], peer=True, env=base
            )
    launcher = "from codegemma.cli import main; raise SystemExit(main())"
    ours = [sys.executable, "-c", launcher, "serve", "--model", str(args.model)]
    ours += ["--threads", str(args.threads), "--host", "127.0.0.1", "--log-level", "warning"]
    ours += shlex.split(args.our_args)
    out[OURS] = Engine(lambda port: [*ours, "--port", str(port)], peer=False, env=base)
    for variant in args.our_variant:
        label, _, extra = variant.partition("=")
        more = [*ours, *shlex.split(extra)]
        out[f"{OURS} ({label})"] = Engine(
            lambda port, more=more: [*more, "--port", str(port)], peer=False, env=base
        )
    for variant in args.variant:
        label, _, tree = variant.partition("=")
        env = checkout_environment(base, Path(tree))
        out[f"{OURS} ({label})"] = Engine(out[OURS].command, peer=False, env=env)
    return out


def replay(url: str, requests: list[tuple[str, str]], args, deadline: float, label: str):
    """The records of one client style against one server, until done or past `deadline`."""
    records = []
    for prefix, suffix in requests:
        if records and time.monotonic() > deadline:
            print(f"{label}: time share used up after {len(records)} requests", file=sys.stderr)
            break
        try:
            records.append(infill(url, prefix, suffix, args.n_predict, args.timeout))
        except httpx.HTTPError as exc:
            print(f"{label}: request failed ({exc!r}); run ends", file=sys.stderr)
            break
        print(label, json.dumps(records[-1]), file=sys.stderr, flush=True)
    return records


def replay_all(args, source: str, line: int) -> dict[str, dict[str, dict]]:
    """Every client style against every server, one server process at a time.

    Peers run first and get three times the time share of our server; ours then replays the
    keystrokes the peer got through (within the total budget), so both medians cover the same
    requests.
    """
    servers = engines(args)
    runs = [(style, name) for style in STYLES for name in servers]
    weights = [3 if servers[name].peer else 1 for _, name in runs]
    end = time.monotonic() + args.budget_s
    results: dict[str, dict[str, dict]] = {}
    for index, (style, name) in enumerate(runs):
        left = end - time.monotonic()
        if left <= 0:
            print(f"{name} {style}: skipped, the time budget is spent", file=sys.stderr)
            continue
        deadline = time.monotonic() + left * weights[index] / sum(weights[index:])
        requests = typing_requests(source, line, style)
        if args.max_requests:
            requests = requests[: args.max_requests]
        done = [len(r["records"]) for n, r in results.get(style, {}).items() if servers[n].peer]
        if not servers[name].peer and done:
            # The same keystrokes as the peer (a few seconds each once the cache is warm);
            # only the total budget may cut them short.
            requests, deadline = requests[: min(done)], end
        port = free_port()
        log = args.work / f"{name.split()[0]}.log"
        engine = servers[name]
        with server(engine.command(port), port, log, env=engine.env) as url:
            records = replay(url, requests, args, deadline, f"{name} {style}")
        if records:
            entry = {"summary": summarize(records), "records": records}
            tokens = entry["summary"]["prompt"]
            if name == OURS and tokens and not args.no_engine_step:
                # right after the replay (this machine's speed moves from minute to minute)
                entry["engine_step"] = {
                    "tokens": round(tokens),
                    "ms": engine_step_ms(args, round(tokens)),
                }
            results.setdefault(style, {})[name] = entry
        (args.work / "results.json").write_text(json.dumps(results, indent=1))
    return results


ENGINE_STEP = """
import statistics, sys, time
import torch
import codegemma
from codegemma.prompts import Prompt

model, tokens, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lm = codegemma.load(model, threads=threads, speculate=0)
vocab = lm.config.vocab_size
ids = torch.randint(vocab // 4, vocab, (tokens,), generator=torch.Generator().manual_seed(0))
engine = lm.batch()
sequence = lm.sequence(Prompt(ids.tolist(), ()), max_new_tokens=22, ignore_eos=True)
engine.add(sequence)
times = []
with torch.inference_mode():
    while sequence.generated == 0:
        engine.step()
    for _ in range(20):
        started = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - started)
print(statistics.median(times) * 1000)
"""


def engine_step_ms(args, tokens: int) -> float:
    """The engine's own decode step (median of 20, no server) for one sequence with `tokens`
    tokens in its cache: what a served token should cost. A fresh process, the servers' CPU
    class and threads."""
    command = [sys.executable, "-c", ENGINE_STEP, str(args.model), str(tokens), str(args.threads)]
    out = subprocess.run(
        command, env=isa_environment(args.isa, None), capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    """CPU model and core count."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


def render(args, source: str, line: int, results: dict) -> str:
    """A markdown section: one row per server and client style, with ratios to ours."""
    when = results.get("_when") or _now()
    peers = {n for style, r in results.items() if not style.startswith("_") for n in r}
    peers = {n for n in peers if not n.startswith(OURS)}
    against = "against " + ", ".join(sorted(peers)) if peers else "of our server alone"
    lines = source.splitlines()
    shown = [a for a in sys.argv[1:] if a != "--no-append"]
    if "--from-results" in shown:  # name the measuring run, not the re-rendering
        at = shown.index("--from-results")
        del shown[at : at + 2]
    command = "python benchmarks/keystroke_replay.py " + shlex.join(shown)
    isa = (
        "AVX2 only, emulated (" + ", ".join(f"{k}={v}" for k, v in AVX2_ENV.items()) + ")"
        if args.isa == "avx2"
        else "this CPU (native builds)"
    )
    out = [
        f"## {when} — keystroke replay {against} ({machine()}, {args.threads} threads each)",
        "",
        f"Command: `{command}`. CPU class: {isa}.",
        "",
        f"Re-typing line {line + 1} of {args.source.name} ({len(lines)} lines; the line has "
        f"{len(lines[line])} characters): one streamed `/infill` every 4 keystrokes, prefix up "
        f"to 3000 chars, suffix up to 1000, {args.n_predict} tokens, greedy, one server at a "
        "time. Figures are over the requests after the first; 'first' is the cold first "
        "request. 'x ours' is the peer's median divided by ours (higher: ours is faster).",
        "",
        "| client | server | requests | first TTFT s | TTFT median s | TTFT p90 s | "
        "total median s | total p90 s | prompt tokens | recomputed tokens | per token ms | "
        "server: prompt ms / token ms | drafts kept | TTFT x ours | total x ours |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for style, by_engine in results.items():
        if style.startswith("_"):
            continue
        ours = by_engine.get(OURS, {}).get("summary")
        for name, entry in by_engine.items():
            s = entry["summary"]
            ttft = _ratio(s["ttft_s"][0], ours["ttft_s"][0]) if ours else "-"
            total = _ratio(s["total_s"][0], ours["total_s"][0]) if ours else "-"
            out.append(
                f"| {style} | {name} | {s['requests']} | {s['first_ttft_s']:.2f} | "
                f"{s['ttft_s'][0]:.3f} | {s['ttft_s'][1]:.3f} | {s['total_s'][0]:.3f} | "
                f"{s['total_s'][1]:.3f} | {_count(s['prompt'])} | {_count(s['recomputed'])} | "
                f"{_ms(s.get('per_token_ms'))} | {_ms(s.get('server_prompt_ms'))} / "
                f"{_ms(s.get('server_token_ms'))} | {_kept(s)} | {ttft} | {total} |"
            )
    steps = {  # the engine's step timed right after each style's replay (earlier runs: once)
        style: by_engine[OURS].get("engine_step") or results.get("_engine_step")
        for style, by_engine in results.items()
        if not style.startswith("_") and OURS in by_engine
    }
    if any(steps.values()):
        out += [
            "",
            "The engine's decode step alone (no server, a fresh process, the same tokens "
            "cached, median of 20 steps) and ours per token against it (client-side: the "
            "table's per-token time; server-side: the server's generation time over its tokens "
            "after the first, i.e. per step):",
        ]
        for style, step in steps.items():
            s = results[style][OURS]["summary"]
            if step and s.get("per_token_ms"):
                server = _server_step_ms(results[style][OURS]["records"])
                shown = f", server-side {server / step['ms']:.2f}x" if server else ""
                when = "after that replay" if "engine_step" in results[style][OURS] else "once"
                out.append(
                    f"- {style}: step {step['ms']:.1f} ms ({step['tokens']} tokens, timed {when}); "
                    f"client-side {s['per_token_ms'] / step['ms']:.2f}x{shown}"
                )
    return "\n".join(out) + "\n"


def _server_step_ms(records: list[dict]) -> float | None:
    """The server's own time per decode step: its generation time (first token to the end,
    `predicted_per_token_ms` x n) over the n - 1 steps after the first token; median over
    the requests after the first."""
    steps = [
        r["server_token_ms"] * r["predicted"] / (r["predicted"] - 1)
        for r in records[1:]
        if r.get("server_token_ms") and (r.get("predicted") or 0) > 1
    ]
    return statistics.median(steps) if steps else None


def _kept(summary: dict) -> str:
    """Drafted tokens kept over those checked (speculation), or "-" without any."""
    drafted = summary.get("drafted") or 0
    return f"{summary.get('accepted') or 0}/{drafted}" if drafted else "-"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _ratio(theirs: float, ours: float) -> str:
    return f"{theirs / ours:.1f}x" if ours else "-"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="our checkpoint directory")
    parser.add_argument("--gguf", type=Path, help="the same weights as GGUF, for the peer")
    parser.add_argument("--llama-server", type=Path, help="llama-server binary (omit: ours only)")
    parser.add_argument(
        "--peer-spm", action="store_true", help="also run llama-server --spm-infill"
    )
    parser.add_argument("--peer-args", default="", help="extra llama-server arguments, one string")
    parser.add_argument(
        "--our-args", default="", help="extra `codegemma serve` arguments, one string"
    )
    parser.add_argument("--source", type=Path, default=Path(shlex.__file__), help="file to re-type")
    parser.add_argument(
        "--line", type=int, default=200, help="re-type the first long line from here"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--n-predict", type=int, default=16)
    parser.add_argument("--max-requests", type=int, default=0, help="per run (0: whole line)")
    parser.add_argument("--budget-s", type=float, default=1080, help="seconds for all runs")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per request")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="LABEL=TREE: also run our server from another checkout's src/ (an A/B run)",
    )
    parser.add_argument("--isa", choices=("native", "avx2"), default="native")
    parser.add_argument(
        "--our-variant",
        action="append",
        default=[],
        help="LABEL=ARGS: also run our server with these extra arguments (e.g. speculation off)",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/keystroke-replay"))
    parser.add_argument("--no-append", action="store_true", help="do not add to BENCHMARKS.md")
    parser.add_argument(
        "--no-engine-step",
        action="store_true",
        help="do not time the engine's own decode step at the replay's prompt length",
    )
    parser.add_argument("--from-results", type=Path, help="only render (and append) a results.json")
    args = parser.parse_args()
    if args.llama_server and not args.gguf:
        parser.error("--llama-server needs --gguf")
    args.work.mkdir(parents=True, exist_ok=True)
    source = args.source.read_text()
    line = pick_line(source.splitlines(keepends=True), args.line - 1)
    if args.from_results:
        results = json.loads(args.from_results.read_text())
    else:
        results = replay_all(args, source, line)
        results["_when"] = _now()
        (args.work / "results.json").write_text(json.dumps(results, indent=1))
    report = render(args, source, line, results)
    print(report)
    if not args.no_append:
        with (REPO / "BENCHMARKS.md").open("a") as out:
            out.write("\n" + report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
