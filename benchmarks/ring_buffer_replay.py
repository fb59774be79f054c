"""Ring-buffer replay: llama.vscode / llama.vim's extra context against our server, and how much
of each prompt the prefix cache reuses for different orders of the context chunks.

    python benchmarks/ring_buffer_replay.py [--keystrokes 240] [--chunk-lines 4] [--budget-s 900]
    python benchmarks/ring_buffer_replay.py --model DIR --chunk-lines 64 --prefix-lines 256 \
        --suffix-lines 64 --n-predict 128     # llama.vscode's sizes, on a real CodeGemma

The editor plugins keep a ring of 16 chunks of 64 lines (from around the cursor, yanks, saves
and buffer switches; a chunk 90% similar to one in the ring replaces it; the oldest leaves when
the ring is full) and send the ring, oldest first, as `input_extra` with every request; after
each ring update they send a request with `n_predict: 0` that only warms the cache. This
replays such a session: lines of argparse.py are typed, 3 characters per keystroke, with a
prefix of `--prefix-lines` and a suffix of `--suffix-lines`, and every `--update-every`
keystrokes a new chunk enters the ring (half from around the cursor, half from other stdlib
files) followed by a warming request. By default the sizes are scaled to the shipped model's
256-token context (chunks of 4 lines, 8 lines of prefix, 4 of suffix: the ring holds more than
fits, as 16 chunks of 64 lines overflow an 8k context).

Each order runs on a fresh `codegemma serve` (the shipped model unless `--model`, loopback,
one thread):
- `infill`: the server's own: `/infill` with the ring as sent; whole chunks kept nearest
  (last) first, in the order sent.
- the others build the same prompt text on the client (token counts from `/tokenize`) and send
  it to `/completion`: `sent` (the server's rule, a check of the emulation), `newest-first`,
  `checksum` (kept chunks sorted by a CRC of their text), `token-tail` (the last tokens of all
  chunks joined, cut mid-chunk to fill exactly the room the current file leaves; llama-server
  also keeps the last tokens, but of a room fixed by n_ctx, n_batch and n_predict) and
  `sent-one-budget` (warming requests fitted as if they asked for the keystrokes'
  `n_predict`, so they fit the same chunks).

Reuse is the share of prompt tokens the server reports as reused from its cache
(`tokens_cached / tokens_evaluated`), over keystroke requests and over warming requests.
Bounded: `--keystrokes` requests per order and `--budget-s` seconds in all. Appends a section
to BENCHMARKS.md unless `--no-append`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import random
import shlex
import statistics
import sys
import time
import zlib
from pathlib import Path

import httpx
from keystroke_replay import free_port, machine, server

from codegemma.fim import FILE_SEPARATOR, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RING = 16  # chunks in the ring (llama.vim and llama.vscode)
SIMILAR = 0.9  # a chunk this similar to one in the ring replaces it
ORDERS = ("infill", "sent", "newest-first", "checksum", "token-tail", "sent-one-budget")
STDLIB = ("argparse", "shlex", "textwrap", "string", "json.decoder", "dataclasses", "calendar")


@dataclasses.dataclass(frozen=True)
class Request:
    kind: str  # "key" (a keystroke) or "warm" (n_predict 0 after a ring update)
    prefix: str
    suffix: str
    ring: tuple[tuple[str, str], ...]  # (filename, text), oldest first


def source_lines(module: str) -> list[str]:
    __import__(module)
    return Path(sys.modules[module].__file__).read_text().splitlines(keepends=True)


def similarity(a: str, b: str) -> float:
    """llama.vim's chunk similarity: shared lines over the mean line count."""
    lines_a, lines_b = a.splitlines(), b.splitlines()
    common = sum(1 for line in lines_a if line in lines_b)
    return 2 * common / max(1, len(lines_a) + len(lines_b))


def session(args) -> list[Request]:
    """The requests of one editing session (the same for every order)."""
    rng = random.Random(args.seed)
    files = {name: source_lines(name) for name in STDLIB}
    current = files["argparse"]
    line = args.line
    ring: list[tuple[str, str]] = []
    out = []
    for key in range(args.keystrokes):
        if key % args.update_every == 0:  # a ring update, then a request that warms the cache
            name = "argparse" if rng.random() < 0.5 else rng.choice(STDLIB[1:])
            lines = files[name]
            centre = line if name == "argparse" else rng.randrange(len(lines))
            start = max(0, min(len(lines) - args.chunk_lines, centre + rng.randint(-1024, 1024)))
            chunk = (
                f"{name.replace('.', '/')}.py",
                "".join(lines[start : start + args.chunk_lines]),
            )
            ring = [c for c in ring if similarity(c[1], chunk[1]) <= SIMILAR] + [chunk]
            ring = ring[-RING:]
            out.append(Request("warm", *_cursor(args, current, line, 0), tuple(ring)))
        typed = (key % 12) * 3  # 12 keystrokes a line, then the next line
        out.append(Request("key", *_cursor(args, current, line, typed), tuple(ring)))
        if key % 12 == 11:
            line += 1
    return out


def _cursor(args, lines: list[str], line: int, typed: int) -> tuple[str, str]:
    """(prefix, suffix) while line `line` is typed, `typed` characters in."""
    before = "".join(lines[max(0, line - args.prefix_lines) : line])
    prefix = before + lines[line].rstrip("\n")[:typed]
    return prefix, "\n" + "".join(lines[line + 1 : line + 1 + args.suffix_lines])


class Prompts:
    """The client-side prompt of each order, with the server's token counts."""

    def __init__(self, url: str, context: int) -> None:
        self.url = url
        self.context = context
        self._ids: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if text not in self._ids:
            body = {"content": text}
            self._ids[text] = httpx.post(f"{self.url}/tokenize", json=body).json()["tokens"]
        return self._ids[text]

    def room(self, request: Request, n_predict: int) -> int:
        """Tokens left for context chunks (the budget rule of codegemma.prompts)."""
        budget = self.context - max(1, min(n_predict, self.context // 2))
        fixed = 1 + 3  # BOS and the three FIM tokens
        return budget - fixed - len(self.ids(request.prefix)) - len(self.ids(request.suffix))

    def text(self, request: Request, order: str, n_predict: int) -> tuple[str, int]:
        """The raw prompt of `order` and how many chunks (whole or cut) it holds."""
        room = self.room(request, n_predict)
        if order == "token-tail":
            context, kept = self._tail(request.ring, room)
        else:
            chunks = self._nearest(request.ring, room)
            if order == "newest-first":
                chunks = chunks[::-1]
            elif order == "checksum":
                chunks = sorted(chunks, key=lambda c: zlib.crc32(_file(c).encode()))
            context, kept = "".join(_file(c) + FILE_SEPARATOR for c in chunks), len(chunks)
        body = f"{FIM_SUFFIX}{request.suffix}{FIM_PREFIX}{request.prefix}{FIM_MIDDLE}"
        return context + body, kept

    def _nearest(self, ring, room: int) -> list[tuple[str, str]]:
        kept = []
        for chunk in reversed(ring):
            cost = len(self.ids(_file(chunk))) + 1
            if cost > room:
                break
            room -= cost
            kept.append(chunk)
        return kept[::-1]

    def _tail(self, ring, room: int) -> tuple[str, int]:
        separator = self.ids(FILE_SEPARATOR)
        ids = [t for chunk in ring for t in (*self.ids(_file(chunk)), *separator)]
        tail = ids[max(0, len(ids) - room) :] if room > 0 else []
        body = {"tokens": tail}
        text = httpx.post(f"{self.url}/detokenize", json=body).json()["content"] if tail else ""
        return text, text.count(FILE_SEPARATOR)


def _file(chunk: tuple[str, str]) -> str:
    return f"{chunk[0]}\n{chunk[1]}"


def replay(url: str, order: str, requests: list[Request], args, deadline: float) -> list[dict]:
    context = httpx.get(f"{url}/props").json()["default_generation_settings"]["n_ctx"]
    prompts = Prompts(url, context)
    records = []
    for request in requests:
        if time.monotonic() > deadline:
            break
        n_predict = 0 if request.kind == "warm" else args.n_predict
        common = {"n_predict": n_predict, "temperature": 0, "cache_prompt": True}
        if order == "infill":
            body = {"input_prefix": request.prefix, "input_suffix": request.suffix, **common}
            body["input_extra"] = [{"filename": f, "text": t} for f, t in request.ring]
            answer = httpx.post(f"{url}/infill", json=body, timeout=args.timeout).json()
            kept = len(request.ring) - answer["input_extra_dropped"]
            assert answer["truncated_tokens"] == 0, "the current file must fit whole"
        else:
            fit = args.n_predict if order == "sent-one-budget" else n_predict
            prompt, kept = prompts.text(request, "sent" if order.startswith("sent") else order, fit)
            body = {"prompt": prompt, **common}
            answer = httpx.post(f"{url}/completion", json=body, timeout=args.timeout).json()
        records.append(
            {
                "kind": request.kind,
                "prompt": answer["tokens_evaluated"],
                "cached": answer["tokens_cached"],
                "kept": kept,
            }
        )
    return records


def summarize(records: list[dict]) -> dict:
    def reuse(kind: str | None) -> float:
        chosen = [r for r in records if kind is None or r["kind"] == kind]
        prompt = sum(r["prompt"] for r in chosen)
        return sum(r["cached"] for r in chosen) / prompt if prompt else 0.0

    return {
        "requests": len(records),
        "keys": reuse("key"),
        "warm": reuse("warm"),
        "all": reuse(None),
        "kept": statistics.mean(r["kept"] for r in records),
        "prompt": statistics.mean(r["prompt"] for r in records),
    }


def render(args, results: dict[str, dict]) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    shown = shlex.join(a for a in sys.argv[1:] if a != "--no-append")
    command = f"python benchmarks/ring_buffer_replay.py {shown}".strip()
    out = [
        f"## {when} — ring-buffer replay: prefix reuse by context order ({machine()})",
        "",
        f"Command: `{command}`",
        "",
        f"{args.model or 'The shipped model (256-token context)'}, `codegemma serve --threads 1`, "
        f"one fresh server per order. {args.keystrokes} keystrokes typing argparse.py from line "
        f"{args.line + 1} ({args.prefix_lines} lines of prefix, {args.suffix_lines} of suffix, "
        f"`n_predict` {args.n_predict}), a ring of {RING} "
        f"chunks of {args.chunk_lines} lines updated every {args.update_every} keystrokes, each "
        "update followed by a warming request (`n_predict` 0). Reuse: prompt tokens the server "
        "took from its cache over prompt tokens (`tokens_cached / tokens_evaluated`).",
        "",
        "| order | requests | reuse, keystrokes | reuse, warming | reuse, all | chunks kept "
        "(mean) | prompt tokens (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for order, s in results.items():
        out.append(
            f"| {order} | {s['requests']} | {s['keys']:.3f} | {s['warm']:.3f} | {s['all']:.3f} "
            f"| {s['kept']:.2f} | {s['prompt']:.0f} |"
        )
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keystrokes", type=int, default=240)
    parser.add_argument("--update-every", type=int, default=8)
    parser.add_argument("--chunk-lines", type=int, default=4)
    parser.add_argument("--prefix-lines", type=int, default=8)
    parser.add_argument("--suffix-lines", type=int, default=4)
    parser.add_argument("--model", help="a model for `codegemma serve` (default: the shipped one)")
    parser.add_argument("--n-predict", type=int, default=8)
    parser.add_argument("--line", type=int, default=400, help="first typed line (0-based)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--orders", default=",".join(ORDERS), help="comma-separated")
    parser.add_argument("--budget-s", type=float, default=900)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ring_buffer_replay"))
    parser.add_argument("--no-append", action="store_true", help="do not add to BENCHMARKS.md")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    requests = session(args)
    deadline = time.monotonic() + args.budget_s
    results = {}
    for order in args.orders.split(","):
        port = free_port()
        command = [sys.executable, "-c", "from codegemma.cli import main; raise SystemExit(main())"]
        command += ["serve", "--port", str(port), "--threads", "1"]
        command += ["--model", args.model] if args.model else []
        with server(command, port, args.work / "server.log") as url:
            records = replay(url, order, requests, args, deadline)
        results[order] = summarize(records)
        print(order, json.dumps(results[order]), file=sys.stderr)
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    text = render(args, results)
    print(text)
    if not args.no_append:
        with (REPO / "BENCHMARKS.md").open("a") as out:
            out.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
