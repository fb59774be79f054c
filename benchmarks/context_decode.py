"""Decode speed with a long context: this engine against llama.cpp, on identical weights.

    python benchmarks/context_decode.py [--contexts 4096] [--rounds 1] [--skip ENGINE]

Code completion sends whole files: every new token then attends over thousands of cached
tokens, and reading that cache becomes part of each step's cost. Each engine, in a fresh
process, prefills a prompt of the given length (random token ids, the same for every engine)
and decodes 32 tokens after it; the figure is the median step. Uses the files that
`benchmarks/speed.py` prepares (and prepares them if missing). Prints a table with the ratio
to llama.cpp at equal bits and appends it, dated, to BENCHMARKS.md.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from speed import (
    PAIRS,
    PEERS,
    benchmark_parser,
    machine,
    prepare,
    publish,
    warm_page_cache,
    worker,
)


def decode_after(engine: str, path: Path, context: int, threads: int) -> float | None:
    """Median decode tok/s after a `context`-token prompt, or None if the engine failed."""
    options = ["--prompts", "", "--decode", "32", "--decode-prompt", str(context)]
    return worker(engine, path, threads, *options).get("decode_tok_s")


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--contexts", type=lambda s: [int(x) for x in s.split(",")], default=[4096])
    args = parser.parse_args()
    files, _ = prepare(args.work / args.preset, args.preset)
    pairs = [r for pair in PAIRS for r in (pair, PEERS[pair[3]])]
    rows = [r for r in pairs if r[0] not in args.skip and r[1] not in args.skip]
    best: dict[tuple[str, int], float] = {}
    for _ in range(args.rounds):  # engines in turn, so slow minutes fall on all of them
        for context in args.contexts:
            for name, engine, key, _ in rows:
                warm_page_cache(files[key])
                speed = decode_after(engine, files[key], context, args.threads)
                print(name, context, speed, file=sys.stderr)
                if speed is not None:
                    best[name, context] = max(speed, best.get((name, context), 0.0))
    lines = ["| engine | " + " | ".join(f"tok/s at {c}" for c in args.contexts) + " |"]
    lines.append("|---|" + "---|" * len(args.contexts))
    for name, *_ in rows:
        cells = [f"{best[name, c]:.2f}" if (name, c) in best else "n/a" for c in args.contexts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ratios = []
    for name, _, _, peer in PAIRS:
        for c in args.contexts:
            if (name, c) in best and (peer, c) in best:
                ratios.append(f"- {name} at {c}: {best[name, c] / best[peer, c]:.2f}x {peer}")
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    report = (
        f"\n## {when} — decode after a long prompt, {args.preset} shapes, "
        f"{args.threads} threads\n\nMachine: {machine()}. Command: `python "
        f"benchmarks/context_decode.py --contexts {','.join(map(str, args.contexts))} "
        f"--rounds {args.rounds}` (median of 32 steps after the prompt; best of the rounds).\n\n"
        + "\n".join(lines)
        + "\n\nRatios (same run):\n"
        + "\n".join(ratios)
        + "\n"
    )
    publish(report, append=not args.no_append)


if __name__ == "__main__":
    main()
