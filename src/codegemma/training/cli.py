"""`codegemma train`, `codegemma finetune` and `codegemma train-default-model`."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from pathlib import Path

import torch

from codegemma.checkpoint.hf_dir import save_hf_checkpoint
from codegemma.cpu import default_threads, torch_threads
from codegemma.errors import InvalidRequestError
from codegemma.lora import add_lora, save_adapter
from codegemma.model_args import load_model, model_options
from codegemma.tokenizer import Tokenizer
from codegemma.tokenizer_training import train_tokenizer
from codegemma.training import default_recipe
from codegemma.training.dataset import pack_rows, split_rows
from codegemma.training.fim_transform import FimOptions
from codegemma.training.repo_packing import repository_documents
from codegemma.training.trainer import TrainConfig, make_trainable, train


def register(commands) -> None:
    """Add the training subcommands to the `codegemma` parser."""
    train = commands.add_parser(
        "train", help="train every weight of a small model on repositories (full fine-tuning)"
    )
    _common(train)
    train.set_defaults(run=_run_train)

    finetune = commands.add_parser(
        "finetune", help="train a LoRA adapter (PEFT layout) on repositories"
    )
    _common(finetune)
    finetune.add_argument("--rank", type=int, default=8, help="LoRA rank r")
    finetune.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha")
    finetune.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout")
    finetune.add_argument(
        "--targets",
        default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        help="comma-separated layer names to adapt",
    )
    finetune.set_defaults(run=_run_finetune)

    tokenizer = commands.add_parser(
        "train-tokenizer", help="train a Gemma-style SentencePiece tokenizer on repositories"
    )
    tokenizer.add_argument(
        "--repo", type=Path, action="append", required=True, help="repository (repeatable)"
    )
    tokenizer.add_argument("--out", type=Path, required=True, help="tokenizer.model to write")
    tokenizer.add_argument("--vocab-size", type=int, default=4096)
    tokenizer.set_defaults(run=_run_train_tokenizer)

    recipe = commands.add_parser(
        "train-default-model",
        help="retrain the shipped default model on this Python's standard library",
    )
    recipe.add_argument("--out", type=Path, required=True, help="run directory (resumable)")
    recipe.add_argument("--max-minutes", type=float, help="stop (checkpointed) after this long")
    recipe.add_argument("--threads", type=int, help="torch CPU threads")
    recipe.add_argument("--eval-tasks", type=int, default=1000, help="held-out exact-match tasks")
    recipe.add_argument(
        "--humaneval", action="store_true", help="also score HumanEval single-line infilling"
    )
    recipe.add_argument(
        "--install", action="store_true", help="copy the finished model into the package"
    )
    recipe.set_defaults(run=_run_default_model)


def _common(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    parser.add_argument(
        "--repo", type=Path, action="append", required=True, help="repository (repeatable)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output and run directory")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=4, help="rows per forward pass")
    parser.add_argument("--grad-accum", type=int, default=1, help="forward passes per step")
    parser.add_argument("--lr", type=float, help="peak learning rate (default by method)")
    parser.add_argument("--seq-len", type=int, help="row length (default: model context)")
    parser.add_argument("--held-out", type=float, default=0.05, help="share of rows held out")
    parser.add_argument("--fim-rate", type=float, default=0.9)
    parser.add_argument("--spm-rate", type=float, default=0.5)
    parser.add_argument("--splits", choices=("syntax", "random"), default="syntax")
    parser.add_argument(
        "--bf16", action="store_true", help="autocast matmuls to bfloat16 (parameters as loaded)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, help="stop (checkpointed) after this long")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=50)


def _setup(args) -> contextlib.AbstractContextManager:
    """Check the flags; the context in which PyTorch trains on --threads (default all cores),
    restored afterwards."""
    if args.quantize:
        raise InvalidRequestError("training needs unquantized weights (drop --quantize)")
    # Training needs autograd: the engine's native inference kernels have none.
    args.kernels = "torch"
    return torch_threads(args.threads or default_threads())


def _rows(args, lm):
    documents = [doc for repo in args.repo for doc in repository_documents(repo)]
    if not documents:
        raise InvalidRequestError("no source files found in the given repositories")
    options = FimOptions(fim_rate=args.fim_rate, spm_rate=args.spm_rate, splits=args.splits)
    seq_len = args.seq_len or min(lm.context_length, 2048)
    rows = pack_rows(documents, lm.tokenizer, seq_len, options=options, seed=args.seed)
    print(f"{len(documents)} files, {len(rows)} rows of {seq_len} tokens", file=sys.stderr)
    if len(rows) < 2:
        return rows, None
    return split_rows(rows, args.held_out, seed=args.seed)


def _config(args, default_lr: float):
    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr or default_lr,
        warmup_steps=min(50, max(1, args.steps // 10)),
        dtype="bfloat16" if args.bf16 else "float32",
        eval_every=args.eval_every,
        eval_rows=0,
        checkpoint_every=max(1, min(50, args.steps // 4)),
        log_every=args.log_every,
        seed=args.seed,
        max_seconds=args.max_minutes * 60 if args.max_minutes else None,
    )


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _run_train(args) -> int:
    with _setup(args):
        lm = load_model(args)
        train_rows, held = _rows(args, lm)
        model = make_trainable(lm.model)
        config = _config(args, 3e-4)
        result = train(
            model, train_rows, held, config, args.out, pad_id=lm.tokenizer.pad_id, log=_log
        )
    if result.finished:
        save_hf_checkpoint(model.eval(), args.out)
        shutil.copyfile(lm.tokenizer.path, args.out / lm.tokenizer.path.name)
        _log(f"wrote the trained model to {args.out}")
    return _report(result)


def _run_finetune(args) -> int:
    with _setup(args):
        lm = load_model(args)
        train_rows, held = _rows(args, lm)
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        add_lora(lm.model, r=args.rank, alpha=args.alpha, dropout=args.dropout, targets=targets)
        config = _config(args, 2e-4)
        result = train(
            lm.model, train_rows, held, config, args.out, pad_id=lm.tokenizer.pad_id, log=_log
        )
    if result.finished:
        save_adapter(lm.model, args.out, base_model=str(lm.path or lm.name))
        _log(f"wrote the LoRA adapter to {args.out}")
    return _report(result)


def _report(result) -> int:
    print(json.dumps(_summary(result)))
    return 0


def _summary(result) -> dict:
    return {
        "finished": result.finished,
        "steps": result.step,
        "train_tokens": result.tokens,
        "train_loss": result.train_loss,
        "held_out_loss": result.eval_loss,
    }


def _run_train_tokenizer(args) -> int:
    texts = [doc.text for repo in args.repo for doc in repository_documents(repo)]
    # A small repository may not hold vocab_size distinct pieces: take what it has.
    train_tokenizer(texts, args.out, args.vocab_size, hard_vocab_limit=False)
    size = Tokenizer.from_file(args.out).vocab_size
    print(f"wrote {args.out}: {size} pieces from {len(texts)} files")
    return 0


def _run_default_model(args) -> int:
    max_seconds = args.max_minutes * 60 if args.max_minutes else None
    with torch_threads(args.threads or torch.get_num_threads()):
        summary = default_recipe.train_default_model(args.out, max_seconds=max_seconds, log=_log)
        if summary["finished"]:
            tasks = args.eval_tasks
            summary.update(default_recipe.evaluate_default_model(args.out, tasks, log=_log))
            if args.humaneval:
                summary.update(default_recipe.evaluate_humaneval(args.out, log=_log))
    if summary["finished"] and args.install:
        default_recipe.install(args.out)
        _log("installed the model into the codegemma package")
    print(json.dumps(summary))
    return 0
