"""The recipe of the model that ships inside the package: data, shape, schedule, all fixed here.

Corpus: the `.py` files of the Python standard library of the interpreter that runs the recipe
(PSF License 2.0), packed in repository order, minus a fixed held-out set of modules and their
unit tests, which the model never sees and on which the exact-match score is measured. The
library code is cut into FIM examples twice (two different cuts), the unit tests once: they
are mostly assertions, but they are a lot of Python that repeats its own context, which is
what a small model completing a line needs most.
Run it with `codegemma train-default-model --out DIR`; it resumes from DIR when interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import platform
import shutil
import sysconfig
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from codegemma.checkpoint.hf_dir import save_hf_checkpoint
from codegemma.config import GemmaConfig
from codegemma.default_model import default_model_dir
from codegemma.engine import load
from codegemma.model import GemmaForCausalLM, RMSNorm
from codegemma.tokenizer import Tokenizer
from codegemma.tokenizer_training import train_tokenizer
from codegemma.training.dataset import Document, pack_rows
from codegemma.training.fim_transform import FimOptions
from codegemma.training.humaneval_infill import humaneval_single_line
from codegemma.training.line_infilling import line_tasks, score_line_tasks
from codegemma.training.model_card import CARD, write_model_card
from codegemma.training.repo_packing import order_files, repository_files
from codegemma.training.trainer import TrainConfig, train

# Held out: never trained on, scored by exact match.
HELD_OUT_MODULES: tuple[str, ...] = (
    "calendar.py",
    "colorsys.py",
    "csv.py",
    "fractions.py",
    "graphlib.py",
    "json/encoder.py",
    "netrc.py",
    "queue.py",
    "sched.py",
    "shlex.py",
    "statistics.py",
    "textwrap.py",
)
VOCAB_SIZE = 4096
TOKENIZER_CHARS_PER_FILE = 20_000  # the tokenizer sees the start of every library file
SEQ_LEN = 256  # rows, and the model's context: the scored prompts are fitted to it
DATA_SEED = 0
MODEL_SEED = 0

MODEL_CONFIG = GemmaConfig(
    vocab_size=VOCAB_SIZE,
    hidden_size=192,
    intermediate_size=768,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,  # multi-head: a model this small needs every head for copying
    head_dim=48,
    max_position_embeddings=SEQ_LEN,
)

TRAIN_CONFIG = TrainConfig(
    steps=4300,
    batch_size=16,
    grad_accum=1,
    lr=3e-3,
    min_lr_ratio=0.05,
    warmup_steps=100,
    weight_decay=0.1,
    eval_every=500,
    eval_rows=0,
    checkpoint_every=100,
    log_every=50,
    seed=0,
    compile=True,
)

# What is scored is one hidden whole line between nearby context, answered in PSM order: whole
# lines get half of the middles and PSM most of the examples. The defaults (FIM rate
# 0.9, PSM/SPM 50/50, see FimOptions) stay what `codegemma train`/`finetune` use.
FIM_OPTIONS = FimOptions(
    fim_rate=0.9,
    spm_rate=0.25,
    splits="syntax",
    kind_weights={
        "line": 0.5,
        "lines": 0.1,
        "statement": 0.1,
        "expression": 0.05,
        "line_tail": 0.15,
        "random": 0.1,
    },
)
LIBRARY_PASSES = 2  # differently cut copies of the library code
TEST_PASSES = 1  # and of the unit tests
PIECE_TOKENS = (64, SEQ_LEN)  # window lengths: as much context as a scored prompt, or less
HELD_OUT_SEED = 1000


def stdlib_root() -> Path:
    """The standard library directory of this interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def is_generated_data(rel: str) -> bool:
    """Generated tables and text, not code: charmap codecs and pydoc's topic strings."""
    return rel.startswith(("encodings/", "pydoc_data/")) and not rel.endswith("__init__.py")


def is_test_file(rel: str) -> bool:
    """Unit tests and their data (`test/`, `tests/`, `idle_test/`, `test_*.py`)."""
    parts = rel.split("/")
    return any(p in ("test", "tests", "idle_test") for p in parts[:-1]) or parts[-1].startswith(
        "test_"
    )


def stdlib_files(root: Path | None = None) -> dict[str, str]:
    """{relative path: text} of the standard library's `.py` files (site-packages excluded)."""
    root = root or stdlib_root()
    files = repository_files(root, suffixes={".py"})
    return {
        p: t for p, t in files.items() if not p.startswith(("site-packages/", "dist-packages/"))
    }


def tests_a_held_out_module(rel: str) -> bool:
    """A unit test of a held-out module (`test/test_csv.py`, `test/test_json/...`)."""
    stems = {m.split("/")[0].removesuffix(".py") for m in HELD_OUT_MODULES}
    names = {p.removesuffix(".py") for p in rel.split("/")}
    return any(f"test_{stem}" in names for stem in stems)


def library_documents(files: dict[str, str]) -> list[Document]:
    """The library code (no tests, no generated tables, nothing held out) in packing order."""
    kept = {
        p: t
        for p, t in files.items()
        if p not in HELD_OUT_MODULES and not is_test_file(p) and not is_generated_data(p)
    }
    return [Document(p, kept[p]) for p in order_files(kept)]


def test_documents(files: dict[str, str]) -> list[Document]:
    """The unit tests, except those of held-out modules, in packing order."""
    kept = {
        p: t
        for p, t in files.items()
        if is_test_file(p) and not tests_a_held_out_module(p) and not is_generated_data(p)
    }
    return [Document(p, kept[p]) for p in order_files(kept)]


def training_documents(files: dict[str, str]) -> list[Document]:
    """Everything the model trains on: library code, then unit tests."""
    return library_documents(files) + test_documents(files)


def held_out_documents(files: dict[str, str]) -> list[Document]:
    return [Document(p, files[p]) for p in HELD_OUT_MODULES if p in files]


def init_weights(model: GemmaForCausalLM, seed: int = MODEL_SEED, std: float = 0.02) -> None:
    """Every matrix (projections, embedding) from N(0, std^2); norms at zero (Gemma scales by
    1 + w)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if isinstance(model.get_submodule(name.rpartition(".")[0]), RMSNorm):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def prepare_data(
    work: Path, log: Callable[[str], None]
) -> tuple[Tokenizer, torch.Tensor, torch.Tensor]:
    """Tokenizer and packed rows, built once and kept in `work` (so a resume reuses them)."""
    tokenizer_file, rows_file = work / "tokenizer.model", work / "rows.pt"
    files = None
    if not tokenizer_file.is_file() or not rows_file.is_file():
        files = stdlib_files()
    if not tokenizer_file.is_file():
        started = time.monotonic()
        texts = [d.text[:TOKENIZER_CHARS_PER_FILE] for d in library_documents(files)]
        train_tokenizer(texts, tokenizer_file, VOCAB_SIZE)
        log(f"tokenizer: {VOCAB_SIZE} pieces in {time.monotonic() - started:.0f} s")
    tokenizer = Tokenizer.from_file(tokenizer_file)
    if not rows_file.is_file():
        started = time.monotonic()
        library, tests = library_documents(files), test_documents(files)
        # Each pass cuts and FIM-transforms its documents afresh: new middles, same text.
        # The tests are cut in two halves so that the jobs are of about equal size.
        half = _half_way(tests)
        jobs = [(library, DATA_SEED + k) for k in range(LIBRARY_PASSES)]
        for k in range(TEST_PASSES):
            jobs += [
                (tests[:half], DATA_SEED + 100 + 2 * k),
                (tests[half:], DATA_SEED + 101 + 2 * k),
            ]
        jobs.append((held_out_documents(files), HELD_OUT_SEED))
        workers = min(len(jobs), os.cpu_count() or 1)
        # Spawned, not forked: a fork of a process whose OpenMP pool is running can hang.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            packed = list(
                pool.map(
                    _pack, [d for d, _ in jobs], [tokenizer_file] * len(jobs), [s for _, s in jobs]
                )
            )
        train_rows, held_rows = torch.cat(packed[:-1]), packed[-1]
        torch.save({"train": train_rows, "held_out": held_rows}, rows_file)
        log(f"data: {len(train_rows)} rows in {time.monotonic() - started:.0f} s")
    rows = torch.load(rows_file, weights_only=True)
    return tokenizer, rows["train"], rows["held_out"]


def _half_way(documents: list[Document]) -> int:
    """The index that splits `documents` into two halves of about equal text."""
    total, running = sum(len(d.text) for d in documents), 0
    for i, doc in enumerate(documents):
        running += len(doc.text)
        if 2 * running >= total:
            return i + 1
    return len(documents)


def _pack(documents: list[Document], tokenizer_file: Path, seed: int) -> torch.Tensor:
    """One pass of `documents` as rows (run in a worker process: the tokenizer is reloaded)."""
    tokenizer = Tokenizer.from_file(tokenizer_file)
    return pack_rows(
        documents, tokenizer, SEQ_LEN, options=FIM_OPTIONS, seed=seed, piece_tokens=PIECE_TOKENS
    )


def train_default_model(
    out: str | Path,
    *,
    max_seconds: float | None = None,
    train_config: TrainConfig = TRAIN_CONFIG,
    log: Callable[[str], None] = print,
) -> dict:
    """Run (or resume) the recipe in `out`; when training is done, write the model to
    `out/model` and return its summary (also written to `out/model/training.json`)."""
    out = Path(out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    tokenizer, train_rows, held_rows = prepare_data(work, log)
    model = GemmaForCausalLM(MODEL_CONFIG)
    init_weights(model)
    config = train_config
    if max_seconds is not None:
        config = dataclasses.replace(train_config, max_seconds=max_seconds)
    result = train(model, train_rows, held_rows, config, work, pad_id=tokenizer.pad_id, log=log)
    summary = {
        "finished": result.finished,
        "steps": result.step,
        "train_tokens": result.tokens,
        "train_loss": result.train_loss,
        "held_out_loss": result.eval_loss,
        "train_seconds": round(result.seconds),
        "tokens_per_second": round(result.tokens / max(result.seconds, 1e-9)),
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_rows": len(train_rows),
        "seq_len": SEQ_LEN,
        "batch_size": config.batch_size * config.grad_accum,
        "python": platform.python_version(),
    }
    if result.finished:
        export(model.eval(), work / "tokenizer.model", out / "model")
        (out / "model" / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def export(model: GemmaForCausalLM, tokenizer_file: Path, directory: Path) -> Path:
    """A Hugging Face style model directory that `codegemma.load` reads."""
    save_hf_checkpoint(model, directory)
    shutil.copyfile(tokenizer_file, directory / "tokenizer.model")
    return directory


def evaluate_default_model(
    out: str | Path, count: int = 1000, *, log: Callable[[str], None] = print
) -> dict:
    """Held-out single-line exact match of `out/model`, added to its `training.json`."""
    directory = Path(out) / "model"
    tasks = line_tasks(held_out_documents(stdlib_files()), count, seed=0)
    lm = load(directory, dtype="float32")

    def progress(done: int, total: int) -> None:
        if done % 100 == 0 or done == total:
            log(f"held-out line infilling: {done}/{total}")

    scores = score_line_tasks(lm, tasks, progress=progress)
    samples = scores.pop("samples")
    with open(Path(out) / "held_out_samples.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(s) + "\n" for s in samples)
    _update_record(directory, "held_out_line_infilling", scores)
    return {"held_out_line_infilling": scores}


def evaluate_humaneval(
    out: str | Path, *, workers: int = 1, log: Callable[[str], None] = print
) -> dict:
    """HumanEval single-line infilling pass@1 of `out/model`, two ways (see humaneval_infill):
    "standard" stops only at CodeGemma's stop tokens; "first_line" also at the first newline."""
    directory = Path(out) / "model"
    lm = load(directory, dtype="float32")
    scores = {}
    for name, first_line in (("standard", False), ("first_line", True)):
        log(f"HumanEval single-line infilling, {name} ...")
        scores[name] = humaneval_single_line(
            lm, Path(out) / f"humaneval-single-{name}", first_line_only=first_line, workers=workers
        )
        log(f"HumanEval single-line infilling, {name}: pass@1 {scores[name]['pass@1']}%")
    _update_record(directory, "humaneval_single_line", scores)
    return {"humaneval_single_line": scores}


def _update_record(directory: Path, key: str, value) -> None:
    record = json.loads((directory / "training.json").read_text())
    record[key] = value
    (directory / "training.json").write_text(json.dumps(record, indent=2) + "\n")


def recipe_settings() -> dict:
    """The fixed settings the model card states."""
    return {
        "vocab_size": VOCAB_SIZE,
        "layers": MODEL_CONFIG.num_hidden_layers,
        "hidden_size": MODEL_CONFIG.hidden_size,
        "heads": MODEL_CONFIG.num_attention_heads,
        "head_dim": MODEL_CONFIG.head_dim,
        "intermediate_size": MODEL_CONFIG.intermediate_size,
        "held_out_modules": list(HELD_OUT_MODULES),
        "fim_rate": FIM_OPTIONS.fim_rate,
        "spm_rate": FIM_OPTIONS.spm_rate,
    }


MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.model", "training.json", CARD)


def install(out: str | Path) -> Path:
    """Copy the finished model files of run `out` into the package's default model folder."""
    target = default_model_dir()
    write_model_card(Path(out) / "model", recipe_settings())
    for name in MODEL_FILES:
        shutil.copyfile(Path(out) / "model" / name, target / name)
    return target
