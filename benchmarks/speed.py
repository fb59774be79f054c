"""Speed against llama.cpp and transformers on identical weights, in one run on one machine.

    bash benchmarks/setup.sh                 # llama-cpp-python for the peer (not a package dep)
    python benchmarks/speed.py [--work DIR] [--threads N] [--rounds N] [--skip transformers]
        [--paired-decode N] [--isa avx2]

Writes a random-weight model with the exact CodeGemma-2B shapes (Hugging Face layout), our
int8/int4 checkpoints (`codegemma quantize`), GGUF F16/Q8_0/Q4_0 files (`codegemma convert`),
then measures every engine in a fresh process: load time, prefill tok/s at 128 and 512 tokens,
time to first token, decode tok/s over 64 tokens, batched decode throughput, peak RSS. Prints
a table with ratios and appends it, dated, to BENCHMARKS.md. This machine's speed changes from
minute to minute; `--paired-decode N` adds decode measured N times per precision, ours and
llama.cpp back to back, and the median ratio of those pairs.

`--isa avx2` measures every engine as on a CPU with AVX2/FMA/F16C and no AVX-512: our kernels
built for haswell (CODEGEMMA_KERNEL_ARCH), PyTorch limited by ATEN_CPU_CAPABILITY=avx2 and
ONEDNN_MAX_CPU_ISA=AVX2 (ours and transformers), llama.cpp built with GGML_NATIVE=OFF
GGML_AVX2=ON GGML_AVX512=OFF (benchmarks/build_llama_cpp.sh avx2). The report names the CPU's
flags and the instruction sets each engine says it used.

`--baseline-src DIR` adds our three rows again from another checkout of this repository (e.g.
`git worktree add /tmp/base COMMIT`), its package on PYTHONPATH and its kernels compiled from
its own sources, measured in turn with the others: a change's speed against the commit before
it, in one run, with each figure's ratio to the baseline's; `--paired-decode` then pairs our
rows with the baseline's instead of llama.cpp's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ENGINES = [  # (row name, engine, file key, equal-bits peer row)
    ("codegemma bf16", "codegemma", "hf", "llama.cpp F16"),
    ("codegemma int8", "codegemma", "int8", "llama.cpp Q8_0"),
    ("codegemma int4", "codegemma", "int4", "llama.cpp Q4_0"),
    ("llama.cpp F16", "llama.cpp", "f16", None),
    ("llama.cpp Q8_0", "llama.cpp", "q8_0", None),
    ("llama.cpp Q4_0", "llama.cpp", "q4_0", None),
    ("transformers bf16", "transformers", "hf", None),
]
PAIRS = [row for row in ENGINES if row[3] is not None]  # our rows
PEERS = {peer: next(r for r in ENGINES if r[0] == peer) for *_, peer in PAIRS}  # their rows


def run(cmd: list[str], **kw) -> str:
    print("$", " ".join(cmd), file=sys.stderr)
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, **kw)
    return done.stdout


def _current_quantized(directory: Path) -> bool:
    """Whether `directory` holds a quantized checkpoint in the layout `codegemma quantize`
    writes now (files of earlier versions load too, but regrouped at every start)."""
    from codegemma.checkpoint.quantized import LAYOUT

    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    has_weights = (directory / "model.safetensors").exists()
    return has_weights and config.get("quantization", {}).get("layout") == LAYOUT


def prepare(work: Path, preset: str) -> tuple[dict[str, Path], dict[str, float]]:
    """Every file the engines read, made once and reused; seconds spent converting."""
    files = {"hf": work / "hf"}
    timings: dict[str, float] = {}
    run([sys.executable, str(HERE / "synthetic_model.py"), str(files["hf"]), "--preset", preset])
    for mode in ("int8", "int4"):
        files[mode] = work / mode
        if not _current_quantized(files[mode]):
            shutil.rmtree(files[mode], ignore_errors=True)
            started = time.perf_counter()
            run(["codegemma", "quantize", str(files["hf"]), str(files[mode]), "--bits", mode[3:]])
            timings[f"quantize {mode}"] = time.perf_counter() - started
    for kind in ("f16", "q8_0", "q4_0"):
        files[kind] = work / f"model-{kind}.gguf"
        if not files[kind].exists():
            run(
                [
                    "codegemma",
                    "convert",
                    str(files["hf"]),
                    str(files[kind]),
                    "--to",
                    "gguf",
                    "--type",
                    kind,
                ]
            )
    return files, timings


def warm_page_cache(path: Path) -> None:
    """Read the engine's files once, so every engine starts as a user's second start would:
    from the page cache, not from the disk (the files together outgrow the cache, and a
    cold read measures the disk, not the engine). Each file is first dropped from the cache
    and read anew, so that every engine's files are cached alike: in the large pieces a
    sequential read brings (which maps then use as 2 MB pages), not in the pieces earlier
    writes or reads happened to leave."""
    from codegemma.quant.mapped_pages import drop_cached

    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if file.is_file():
            drop_cached(file)
            with open(file, "rb") as f:
                while f.read(16 << 20):
                    pass


LOWER_IS_BETTER = ("load_s", "load_to_first_token_s", "ttft128_s", "ttft512_s")


def combine(runs: list[dict]) -> dict:
    """One row from several rounds: the best speed and time of each figure (the machine's
    memory bandwidth varies from minute to minute), the highest peak RSS."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[-1]
    merged = dict(good[-1])
    for key, value in merged.items():
        values = [r[key] for r in good if isinstance(r.get(key), float)]
        if not isinstance(value, float) or not values:
            continue
        if key == "peak_rss_gb":
            merged[key] = max(values)
        elif key in LOWER_IS_BETTER or key.startswith("ttft"):
            merged[key] = min(values)
        else:
            merged[key] = max(values)
    merged["rounds"] = len(good)
    return merged


# what an AVX2-only CPU runs, emulated on a wider one (see the module docstring)
AVX2_ENV = {
    "CODEGEMMA_KERNEL_ARCH": "haswell",
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}


def isa_environment(isa: str, llama_build: Path | None) -> dict[str, str]:
    """The environment of every worker: the CPU class to emulate and which llama.cpp build
    llama-cpp-python loads (LLAMA_CPP_LIB_PATH)."""
    env = dict(os.environ)
    if isa == "avx2":
        env.update(AVX2_ENV)
    if llama_build is not None:
        env["LLAMA_CPP_LIB_PATH"] = str(llama_build)
    return env


def llama_build_dir(isa: str) -> Path | None:
    """The bin/ folder of llama.cpp built for `isa` by build_llama_cpp.sh (built on first
    use), or None if the build fails (llama-cpp-python's own library is used then, for
    `native` only)."""
    try:
        out = run(["bash", str(HERE / "build_llama_cpp.sh"), isa])
    except subprocess.CalledProcessError:
        if isa != "native":
            raise
        return None
    return Path(out.strip().splitlines()[-1])


def worker(engine: str, path: Path, threads: int, *options: str, env=None) -> dict:
    """Run speed_worker.py on one engine and file in a fresh process: its figures, or
    {"error": ...} if it failed."""
    cmd = [sys.executable, str(HERE / "speed_worker.py"), engine, str(path)]
    cmd += ["--threads", str(threads), *options]
    try:
        return json.loads(run(cmd, env=env).strip().splitlines()[-1])
    except (subprocess.CalledProcessError, ValueError, IndexError) as exc:
        return {"error": str(exc)[:200]}


def measure(
    engine: str,
    path: Path,
    args,
    transformers_prompts: list[int],
    decode_only: bool = False,
    env: dict | None = None,
) -> dict:
    """One worker's figures; `decode_only`: load, a 16-token prompt and the decode figure;
    `env`: the worker's environment (default: the run's)."""
    prompts = transformers_prompts if engine == "transformers" else args.prompts
    if decode_only:
        prompts = [16]
    options = [
        "--prompts",
        ",".join(map(str, prompts)),
        "--decode",
        str(args.decode if engine != "transformers" else args.transformers_decode),
        "--repeat",
        str(args.repeat),
    ]
    if engine != "llama.cpp" and not decode_only:  # llama-cpp-python decodes one sequence
        options += ["--batches", ",".join(map(str, args.batches))]
    return worker(engine, path, args.threads, *options, env=env or args.env)


BASELINE = "codegemma@base"  # row names of --baseline-src: "codegemma@base int8", ...


def checkout_environment(env: dict, tree: Path) -> dict:
    """`env` with another checkout's package first on PYTHONPATH (its kernels then compile
    from its own sources), for A/B runs against an earlier commit."""
    src = Path(tree).resolve() / "src"
    if not (src / "codegemma").is_dir():
        raise SystemExit(f"{tree} has no src/codegemma (a checkout of this repository?)")
    return dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")])))


def baseline_rows(source: Path | None, env: dict) -> list[tuple[str, str, str, dict]]:
    """(row name, engine, file key, environment) of our rows run from another checkout."""
    if source is None:
        return []
    changed = checkout_environment(env, source)
    return [
        (name.replace("codegemma", BASELINE, 1), engine, key, changed)
        for name, engine, key, _ in PAIRS
    ]


def baseline_ratios(results: dict[str, dict]) -> str:
    """Each of our rows against the same row of the baseline checkout."""
    lines = []
    for name, *_ in PAIRS:
        ours, base = results.get(name, {}), results.get(name.replace("codegemma", BASELINE, 1), {})
        parts = [
            f"{label} {ours[key] / base[key]:.2f}x"
            for key, label in (
                ("decode_tok_s", "decode"),
                ("prefill128_tok_s", "pp128"),
                ("prefill512_tok_s", "pp512"),
                ("batch8_tok_s", "b8"),
                ("load_s", "load time"),
            )
            if ours.get(key) and base.get(key)
        ]
        if parts:
            lines.append(f"- {name} / {BASELINE}: " + "; ".join(parts))
    return "\n".join(lines)


def columns(batches: list[int]) -> list[tuple[str, str, str]]:
    """(figure, heading, format) of every table column; one per batch size measured."""
    return [
        ("load_s", "load s", ".1f"),
        ("load_to_first_token_s", "load+1st tok s", ".1f"),
        ("prefill128_tok_s", "pp128 t/s", ".1f"),
        ("prefill512_tok_s", "pp512 t/s", ".1f"),
        ("ttft128_s", "TTFT128 s", ".2f"),
        ("decode_tok_s", "tg64 t/s", ".2f"),
        *((f"batch{b}_tok_s", f"b{b} t/s", ".2f") for b in batches),
        ("peak_rss_gb", "RSS GB", ".2f"),
    ]


def table(results: dict[str, dict], batches: list[int]) -> str:
    shown = columns(batches)
    head = "| engine | " + " | ".join(c[1] for c in shown) + " | load before / after |"
    lines = [head, "|" + "---|" * (len(shown) + 2)]
    for name, r in results.items():
        cells = [format(r[k], f) if isinstance(r.get(k), float) else "n/a" for k, _, f in shown]
        load = r.get("load_avg")
        cells.append(f"{load[0]:.1f} / {load[1]:.1f}" if load else "n/a")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(results: dict[str, dict]) -> str:
    """Our rows against the equal-bits llama.cpp row, llama.cpp's best prefill, transformers."""
    lines = []
    best_pp512 = max(
        (r.get("prefill512_tok_s", 0) for n, r in results.items() if n.startswith("llama.cpp")),
        default=0,
    )
    hf = results.get("transformers bf16", {})
    for name, _, _, peer in ENGINES:
        ours = results.get(name)
        if not ours or "error" in ours or peer is None:
            continue
        parts = []
        p = results.get(peer, {})
        for key, label in (
            ("decode_tok_s", "decode"),
            ("prefill512_tok_s", "pp512"),
            ("prefill128_tok_s", "pp128"),
        ):
            if p.get(key) and ours.get(key):
                parts.append(f"{label} {ours[key] / p[key]:.2f}x {peer}")
        if best_pp512 and ours.get("prefill512_tok_s"):
            parts.append(f"pp512 {ours['prefill512_tok_s'] / best_pp512:.2f}x llama.cpp best")
        for key, label in (("decode_tok_s", "decode"), ("prefill128_tok_s", "pp128")):
            if hf.get(key) and ours.get(key):
                parts.append(f"{label} {ours[key] / hf[key]:.2f}x transformers")
        if parts:
            lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines)


SIMD_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "amx_bf16",
)


def machine() -> str:
    """The CPU's model, cores and the SIMD flags that matter here."""
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        for line in lines:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next(x for x in lines if x.startswith("flags")).split()
        simd = [f for f in SIMD_FLAGS if f in flags]
    except (OSError, StopIteration):
        simd = []
    return f"{cpu}, {os.cpu_count()} cores (flags: {' '.join(simd) or 'no AVX2'})"


def isa_report(isa: str, results: dict[str, dict]) -> str:
    """Which CPU class was measured, and the instruction sets each engine reported."""
    if isa == "avx2":
        emulated = ", ".join(f"{k}={v}" for k, v in AVX2_ENV.items())
        measured = (
            f"AVX2 only, emulated ({emulated}; llama.cpp built with GGML_NATIVE=OFF "
            "GGML_AVX2=ON GGML_AVX512=OFF)"
        )
    else:
        measured = "this CPU (native builds)"
    lines = [f"CPU class measured: {measured}."]
    seen = {}
    for name, result in results.items():
        engine = name.split()[0]
        if result.get("isa") and engine not in seen:
            seen[engine] = result["isa"]
    lines += [f"- {engine}: {text}" for engine, text in seen.items()]
    return "\n".join(lines)


def benchmark_parser(description: str) -> argparse.ArgumentParser:
    """The options every peer benchmark takes: where the files live, the model shapes, the
    threads, how many rounds, which engines to leave out, whether to write BENCHMARKS.md."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/codegemma-bench"))
    parser.add_argument("--preset", default="codegemma-2b")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=1, help="measure every engine this many times, in turn"
    )
    parser.add_argument(
        "--skip", action="append", default=[], help="an engine or table row to leave out"
    )
    parser.add_argument("--no-append", action="store_true", help="do not write BENCHMARKS.md")
    return parser


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument(
        "--prompts", type=lambda s: [int(x) for x in s.split(",")], default=[128, 512]
    )
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8])
    parser.add_argument(
        "--transformers-prompts",
        default="128",
        help="transformers is slow here: prompt lengths it is timed on",
    )
    parser.add_argument("--transformers-decode", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2, help="prefill runs; the fastest counts")
    parser.add_argument(
        "--isa",
        choices=("native", "avx2"),
        default="native",
        help="CPU class: this CPU, or AVX2 only (emulated on an AVX-512 CPU)",
    )
    parser.add_argument(
        "--paired-decode",
        type=int,
        default=0,
        help="then measure decode this many times per precision, ours and llama.cpp alternately",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="also run our rows from this checkout (an earlier commit), ratios to it",
    )
    args = parser.parse_args()
    args.env = isa_environment(args.isa, llama_build_dir(args.isa))
    extra = baseline_rows(args.baseline_src, args.env)
    files, timings = prepare(args.work / args.preset, args.preset)
    t_prompts = [int(x) for x in args.transformers_prompts.split(",")]
    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):  # engines in turn, so slow minutes fall on all of them
        rows = [(name, engine, key, None) for name, engine, key, _ in ENGINES] + extra
        for name, engine, key, env in rows:
            if engine in args.skip or name in args.skip:
                continue
            warm_page_cache(files[key])
            figures = measure(engine, files[key], args, t_prompts, env=env)
            runs.setdefault(name, []).append(figures)
            print(name, json.dumps(runs[name][-1]), file=sys.stderr)
    results = {name: combine(found) for name, found in runs.items()}
    against_peers = ratios(results)
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    report = (
        f"\n## {when} — {args.preset} shapes, {args.threads} threads\n\n"
        f"Machine: {machine()}. Command: `python benchmarks/speed.py "
        + " ".join(sys.argv[1:])
        + "` (engines in turn, best figure of "
        "the rounds, highest RSS; each file dropped from the page cache and read again "
        "before each load). "
        "Conversion: "
        + (", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) or "reused files")
        + f".\n\n{isa_report(args.isa, results)}\n\n{table(results, args.batches)}\n\n"
        + (f"Ratios (same run):\n{against_peers}\n" if against_peers else "")
    )
    if extra:
        report += (
            f"\nAgainst the baseline checkout `{args.baseline_src}` "
            f"({git_commit(args.baseline_src)}; this tree: {git_commit(REPO)}):\n"
            f"{baseline_ratios(results)}\n"
        )
    if args.paired_decode:
        report += (
            f"\nPaired decode (`--paired-decode {args.paired_decode}`: each pair measured back "
            f"to back, order alternating; ours / {'the baseline' if extra else 'llama.cpp'}):"
            f"\n{paired_decode(files, args, extra)}\n"
        )
    publish(report, append=not args.no_append)


def paired_decode(files: dict[str, Path], args, extra=()) -> str:
    """Decode of each of our rows and its equal-bits llama.cpp row (or, with `extra` rows of
    --baseline-src, the same row of the baseline checkout), measured alternately (ours,
    other, other, ours, ...) `args.paired_decode` times each, with nothing in between: the
    two runs of a pair fall in the same minute of the machine, whose speed changes from one
    minute to the next. The ratio of each pair and their median."""
    lines = []
    for name, engine, key, peer in PAIRS:
        if extra:  # (row, engine, file key, environment) of the baseline's same row
            other = next(row for row in extra if row[2] == key)
        else:
            other = (peer, *PEERS[peer][1:3], None)
        if {name, engine, other[0], other[1]} & set(args.skip):
            continue
        warm_page_cache(files[key])
        warm_page_cache(files[other[2]])
        pairs = []
        for index in range(args.paired_decode):
            order = [(name, engine, key, None), other]
            figures = {}
            for row, row_engine, row_key, env in order if index % 2 == 0 else order[::-1]:
                result = measure(row_engine, files[row_key], args, [], decode_only=True, env=env)
                print(row, "decode", result.get("decode_tok_s"), file=sys.stderr)
                figures[row] = result.get("decode_tok_s")
            if figures[name] and figures[other[0]]:
                pairs.append((figures[name], figures[other[0]]))
        if pairs:
            each = ", ".join(f"{a:.2f} / {b:.2f}" for a, b in pairs)
            median = statistics.median(a / b for a, b in pairs)
            lines.append(f"- {name} / {other[0]}: {each} tok/s; median ratio {median:.2f}x")
    return "\n".join(lines)


def git_commit(tree: Path) -> str:
    """The commit a checkout is at (and whether it has changes), for the report."""
    try:
        head = run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"]).strip()
        dirty = run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"])
    except (subprocess.CalledProcessError, OSError):
        return "not a git checkout"
    return head + (" with uncommitted changes" if dirty.strip() else "")


def publish(report: str, append: bool) -> None:
    """Print a dated report and, with `append`, add it to BENCHMARKS.md."""
    print(report)
    if append:
        with open(REPO / "BENCHMARKS.md", "a") as f:
            f.write(report)


if __name__ == "__main__":
    main()
