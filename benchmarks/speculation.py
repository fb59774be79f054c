"""Lossless n-gram speculation: what checking drafted tokens costs, and what it saves.

    python benchmarks/speculation.py cost [--work /tmp/codegemma-bench/codegemma-2b]
    python benchmarks/speculation.py editing [--llama-server DIR] [--max-tasks 40]

`cost`: on CodeGemma-2B shapes (the random-weight checkpoints benchmarks/speed.py writes), the
time of one decode pass over a sequence's pending token plus k = 0..8 drafted tokens, relative
to a plain decode step (k = 0), per precision (bf16, int8, int4): drafted tokens are cheap when
a pass costs about the same for 1 or 9 rows.

`editing`: on the shipped default model, re-typing functions of the standard-library modules
held out of its training that have a near-copy earlier in the same file (difflib ratio >= 0.7):
the prompt runs from the near-copy to the new function's signature, the model writes the body
(greedy, at most 64 tokens). Ours with speculation off and on (the same tokens, checked), the
share of drafted tokens kept, decode tokens per second and the speed-up; and, with
`--llama-server`, llama-server on the same weights (GGUF F32) without and with its n-gram
speculation (`--spec-type ngram-simple`), in the same run.

Prints a table and appends it, with machine, CPU flags and date, to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import difflib
import json
import shlex
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import httpx
import torch
from keystroke_replay import free_port, server
from speed import machine, publish

import codegemma
from codegemma.default_model import default_model_dir
from codegemma.prompts import Prompt
from codegemma.training.default_recipe import HELD_OUT_MODULES

DRAFTS = (0, 1, 2, 3, 4, 6, 8)


# ----------------------------------------------------------------------------------- cost


def verify_cost(path: Path, repeat: int = 7) -> dict[int, float]:
    """Median ms of one decode pass with k drafted tokens after the pending one, per k."""
    lm = codegemma.load(path)
    engine = lm.batch()
    prompt = list(range(1000, 1064))
    sequence = lm.sequence(Prompt(prompt, ()), max_new_tokens=16, ignore_eos=True)
    engine.add(sequence)
    with torch.inference_mode():
        engine.step()  # the prompt, then a pending token
        cache = sequence.cache
        start = cache.length
        out = {}
        for k in DRAFTS:
            tokens = [sequence.pending[0], *range(2000, 2000 + k)]
            times = []
            for _ in range(repeat):
                began = time.perf_counter()
                engine._rows([(cache, tokens, 0)])  # noqa: SLF001 - the pass itself is measured
                times.append(time.perf_counter() - began)
                cache.length = start
            out[k] = statistics.median(times) * 1000
    lm.close()
    return out


def cost_report(work: Path) -> str:
    rows = []
    for name in ("hf", "int8", "int4"):
        if not (work / name).exists():
            print(f"{work / name}: missing (run benchmarks/speed.py first)", file=sys.stderr)
            continue
        times = verify_cost(work / name)
        label = {"hf": "bf16"}.get(name, name)
        cells = " | ".join(f"{times[k]:.0f} ({times[k] / times[0]:.2f}x)" for k in DRAFTS)
        rows.append(f"| {label} | {cells} |")
        print(label, json.dumps(times), file=sys.stderr)
    head = "| weights | " + " | ".join(f"k={k} ms" for k in DRAFTS) + " |"
    return "\n".join([head, "|" + "---|" * (len(DRAFTS) + 1), *rows])


# -------------------------------------------------------------------------------- editing


def editing_tasks(tokenizer, context: int, max_new: int, limit: int) -> list[dict]:
    """Functions of the held-out modules with a near-copy earlier in their file: the prompt
    (from the near-copy to the signature), the body to write."""
    library = Path(sysconfig.get_paths()["stdlib"])
    tasks = []
    for module in HELD_OUT_MODULES:
        source = (library / module).read_text()
        lines = source.splitlines(keepends=True)
        functions = [
            node
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        functions.sort(key=lambda node: node.lineno)
        for later_index, later in enumerate(functions):
            body = "".join(lines[later.body[0].lineno - 1 : later.end_lineno])
            later_text = "".join(lines[later.lineno - 1 : later.end_lineno])
            for earlier in functions[:later_index]:
                earlier_text = "".join(lines[earlier.lineno - 1 : earlier.end_lineno])
                if difflib.SequenceMatcher(None, earlier_text, later_text).ratio() < 0.7:
                    continue
                prompt = "".join(lines[earlier.lineno - 1 : later.body[0].lineno - 1])
                if len(tokenizer.encode(prompt)) + max_new <= context:
                    tasks.append(
                        {"module": module, "function": later.name, "prompt": prompt, "body": body}
                    )
                break
    return tasks[:limit]


def run_ours(lm, tasks: list[dict], speculate: int, max_new: int) -> dict:
    """Each task alone, greedy: tokens, decode seconds, drafted and kept tokens."""
    tokens, seconds, drafted, kept, outputs = 0, 0.0, 0, 0, []
    for task in tasks:
        engine = lm.batch()
        sequence = lm.sequence(
            lm.prompts.text(task["prompt"], reserve=max_new),
            max_new_tokens=max_new,
            speculate=speculate,
        )
        engine.add(sequence)
        with torch.inference_mode():
            for _ in engine.run():
                pass
        done = sequence.completion
        tokens += done.usage.completion_tokens
        seconds += done.usage.generation_seconds
        drafted, kept = drafted + sequence.drafted, kept + sequence.accepted
        outputs.append(done.token_ids)
    return {
        "tokens": tokens,
        "tok_s": tokens / seconds,
        "drafted": drafted,
        "kept": kept,
        "outputs": outputs,
    }


def run_peer(binary: Path, gguf: Path, tasks, max_new: int, extra: list[str], log: Path) -> dict:
    """llama-server on the same tasks, one request at a time: decode tokens per second."""
    port = free_port()
    command = [
        str(binary / "llama-server"),
        "-m",
        str(gguf),
        "-t",
        "2",
        "-c",
        "256",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]
    tokens, seconds = 0, 0.0
    with server(command, port, log) as url:
        for task in tasks:
            body = {
                "prompt": task["prompt"],
                "n_predict": max_new,
                "temperature": 0,
                "top_k": 1,
                "cache_prompt": False,
            }
            answer = httpx.post(f"{url}/completion", json=body, timeout=120).json()
            timings = answer.get("timings", {})
            tokens += timings.get("predicted_n", 0)
            seconds += timings.get("predicted_ms", 0.0) / 1000
    return {"tokens": tokens, "tok_s": tokens / seconds if seconds else 0.0}


def editing_report(args) -> str:
    lm = codegemma.load()
    tasks = editing_tasks(lm.tokenizer, lm.context_length, args.max_new, args.max_tasks)
    plain = run_ours(lm, tasks, 0, args.max_new)
    drafted = run_ours(lm, tasks, args.speculate, args.max_new)
    same = plain["outputs"] == drafted["outputs"]
    rows = [
        f"| codegemma, speculation off | {plain['tokens']} | {plain['tok_s']:.0f} | - | 1.00x |",
        f"| codegemma, speculate={args.speculate} | {drafted['tokens']} | "
        f"{drafted['tok_s']:.0f} | {drafted['kept']}/{drafted['drafted']} "
        f"({drafted['kept'] / max(1, drafted['drafted']):.0%}) | "
        f"{drafted['tok_s'] / plain['tok_s']:.2f}x |",
    ]
    if args.llama_server:
        with tempfile.TemporaryDirectory() as tmp:
            gguf = Path(tmp) / "default-f32.gguf"
            subprocess.run(
                [
                    "codegemma",
                    "convert",
                    str(default_model_dir()),
                    str(gguf),
                    "--to",
                    "gguf",
                    "--type",
                    "f32",
                ],
                check=True,
            )
            log = Path(tmp) / "llama-server.log"
            off = run_peer(args.llama_server, gguf, tasks, args.max_new, [], log)
            spec = ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "3"]
            spec += ["--spec-ngram-simple-size-m", str(args.speculate)]
            on = run_peer(args.llama_server, gguf, tasks, args.max_new, spec, log)
        rows += [
            f"| llama-server | {off['tokens']} | {off['tok_s']:.0f} | - | 1.00x |",
            f"| llama-server {' '.join(spec)} | {on['tokens']} | {on['tok_s']:.0f} | - | "
            f"{on['tok_s'] / off['tok_s']:.2f}x |",
        ]
    head = (
        f"{len(tasks)} functions of the held-out modules re-typed after their near-copy "
        f"(greedy, at most {args.max_new} tokens each); ours gave the same tokens with and "
        f"without speculation: {'yes' if same else 'NO'}.\n\n"
        "| engine | tokens | decode tok/s | drafted tokens kept | speed-up |\n|---|---|---|---|---|"
    )
    return head + "\n" + "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("cost", "editing"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/codegemma-bench/codegemma-2b"))
    parser.add_argument("--llama-server", type=Path, help="llama.cpp's bin/ folder (optional)")
    parser.add_argument("--speculate", type=int, default=8)
    parser.add_argument("--max-new", type=int, default=64)
    parser.add_argument("--max-tasks", type=int, default=40)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    command = "python benchmarks/speculation.py " + shlex.join(
        a for a in sys.argv[1:] if a != "--no-append"
    )
    if args.part == "cost":
        title = "speculation: the cost of checking drafted tokens (CodeGemma-2B shapes)"
        body = cost_report(args.work)
    else:
        title = "speculation: re-typing near-copies (the default model)"
        body = editing_report(args)
    report = f"\n## {when} — {title}\n\nMachine: {machine()}. Command: `{command}`.\n\n{body}\n"
    publish(report, append=not args.no_append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
