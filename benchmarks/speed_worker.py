"""Measure one engine on one checkpoint, in a process of its own (so peak RSS is its own).

    python benchmarks/speed_worker.py ENGINE PATH --threads 2 --prompts 128,512 --decode 64
        --batches 4,8

ENGINE is `codegemma`, `llama.cpp` or `transformers`. Prints one JSON object. Every engine
is timed on the same random token ids, through its normal incremental-decoding path.
Figures resist other work on the machine: prefill is the fastest of `--repeat` runs, decode
speeds come from the median time of one step; the load average is reported beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

import torch


def token_ids(count: int, seed: int, vocab: int = 256000) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1000, vocab - 1000, (count,), generator=generator).tolist()


# ------------------------------------------------------------------------------ codegemma


def run_codegemma(path: str, args) -> dict:
    import codegemma
    from codegemma.prompts import Prompt

    started = time.perf_counter()
    lm = codegemma.load(path, threads=args.threads)
    result = {
        "load_s": time.perf_counter() - started,
        "kernels": lm.acceleration.kernels,
        "weights": lm.weights,
        "build_s": lm.acceleration.build_seconds,
        "layout_s": lm.acceleration.layout_seconds,  # regrouping weights, part of load_s
        "isa": _our_isa(lm),
    }

    def timed_steps(prompts: list[list[int]], steps: int) -> tuple[float, list[float]]:
        """(seconds to the first token, seconds of each of the following `steps` steps), the
        prompts computed first, then decoded together through the engine's step loop."""
        engine = lm.batch(interleave=False)
        sequences = [
            # no speculation: random weights repeat themselves, and the peers draft nothing
            lm.sequence(Prompt(ids, ()), max_new_tokens=steps + 1, ignore_eos=True, speculate=0)
            for ids in prompts
        ]
        for sequence in sequences:
            engine.add(sequence)
        times = []
        with torch.inference_mode():
            t0 = time.perf_counter()
            while any(s.generated == 0 for s in sequences):
                engine.step()
            first = time.perf_counter() - t0
            for _ in range(steps):
                t1 = time.perf_counter()
                engine.step()
                times.append(time.perf_counter() - t1)
        return first, times

    # Warm up (page in the weights, start the threads); from the start of loading to this
    # first token is what a user waits for after starting the engine.
    timed_steps([token_ids(16, 0)], 2)
    result["load_to_first_token_s"] = time.perf_counter() - started
    for n in args.prompts:
        first = min(timed_steps([token_ids(n, n)], 0)[0] for _ in range(args.repeat))
        result[f"prefill{n}_tok_s"] = n / first
        result[f"ttft{n}_s"] = first
    _, times = timed_steps([token_ids(args.decode_prompt, 1)], args.decode)
    result["decode_tok_s"] = 1 / statistics.median(times)
    for b in args.batches:
        prompts = [token_ids(args.decode_prompt, 100 + i) for i in range(b)]
        _, times = timed_steps(prompts, args.batch_decode)
        result[f"batch{b}_tok_s"] = b / statistics.median(times)
    return result


def _our_isa(lm) -> str:
    """The instruction sets our kernels were built for, and PyTorch's CPU dispatch level."""
    native = lm.acceleration.native
    torch_level = torch.backends.cpu.get_cpu_capability()
    if native is None:
        return f"plain PyTorch ({torch_level})"
    return f"kernels -march={native.arch}: {native.isa}; PyTorch {torch_level}"


# ------------------------------------------------------------------------------ llama.cpp


def run_llama_cpp(path: str, args) -> dict:
    import llama_cpp
    from llama_cpp import Llama

    started = time.perf_counter()
    llm = Llama(
        model_path=path,
        n_ctx=max(args.prompts + [args.decode_prompt]) + args.decode + 8,
        n_batch=512,
        n_ubatch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        logits_all=False,
        verbose=False,
    )
    result = {"load_s": time.perf_counter() - started}
    result["isa"] = llama_cpp.llama_print_system_info().decode().strip()
    llm.eval(token_ids(16, 0))  # warm up, as for codegemma: the first token after loading
    llm.sample(temp=0.0)
    result["load_to_first_token_s"] = time.perf_counter() - started
    for n in args.prompts:
        ids = token_ids(n, n)
        best = float("inf")
        for _ in range(args.repeat):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(ids)
            llm.sample(temp=0.0)
            best = min(best, time.perf_counter() - t0)
        result[f"prefill{n}_tok_s"] = n / best
        result[f"ttft{n}_s"] = best
    llm.reset()
    llm.eval(token_ids(args.decode_prompt, 1))
    token = llm.sample(temp=0.0)
    times = []
    for _ in range(args.decode):
        t1 = time.perf_counter()
        llm.eval([token])
        token = llm.sample(temp=0.0)
        times.append(time.perf_counter() - t1)
    result["decode_tok_s"] = 1 / statistics.median(times)
    return result


# --------------------------------------------------------------------------- transformers


def run_transformers(path: str, args) -> dict:
    import transformers

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    result = {"load_s": time.perf_counter() - started}
    result["isa"] = f"PyTorch {torch.backends.cpu.get_cpu_capability()}"

    def steps(prompts: list[list[int]], count: int) -> tuple[float, list[float]]:
        ids = torch.tensor(prompts)
        times = []
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model(ids, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            first = time.perf_counter() - t0
            past = out.past_key_values
            for _ in range(count):
                t1 = time.perf_counter()
                out = model(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                times.append(time.perf_counter() - t1)
        return first, times

    steps([token_ids(16, 0)], 1)
    for n in args.prompts:
        first = min(steps([token_ids(n, n)], 0)[0] for _ in range(args.repeat))
        result[f"prefill{n}_tok_s"] = n / first
        result[f"ttft{n}_s"] = first
    _, times = steps([token_ids(args.decode_prompt, 1)], args.decode)
    result["decode_tok_s"] = 1 / statistics.median(times)
    for b in args.batches:
        prompts = [token_ids(args.decode_prompt, 100 + i) for i in range(b)]
        _, times = steps(prompts, args.batch_decode)
        result[f"batch{b}_tok_s"] = b / statistics.median(times)
    return result


RUNNERS = {"codegemma": run_codegemma, "llama.cpp": run_llama_cpp, "transformers": run_transformers}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("engine", choices=sorted(RUNNERS))
    parser.add_argument("path")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=_ints, default=[128, 512])
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--decode-prompt", type=int, default=32)
    parser.add_argument("--batches", type=_ints, default=[])
    parser.add_argument("--batch-decode", type=int, default=16)
    parser.add_argument(
        "--repeat", type=int, default=2, help="prefill runs per length; the fastest counts"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    result = RUNNERS[args.engine](args.path, args)
    # Other work on the machine skews figures: the 1-minute load average before and after.
    result["load_avg"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(json.dumps(result))


if __name__ == "__main__":
    main()
