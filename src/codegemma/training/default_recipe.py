"""The recipe of the model that ships inside the package: data, shape, schedule, all fixed here.

Corpus: the library `.py` files of the Python standard library of the interpreter that runs
the recipe (PSF License 2.0; unit tests left out, being mostly repetitive assertions), packed in
repository order, minus a fixed held-out set of modules, which the model never sees and on which
the exact-match score is measured.
Run it with `codegemma train-default-model --out DIR`; it resumes from DIR when interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import torch

from codegemma.config import GemmaConfig
from codegemma.loading import save_hf_checkpoint
from codegemma.model import GemmaForCausalLM, RMSNorm
from codegemma.tokenizer import Tokenizer
from codegemma.tokenizer_training import train_tokenizer
from codegemma.training.dataset import Document, pack_rows
from codegemma.training.fim_transform import FimOptions
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
TOKENIZER_CHARS_PER_FILE = 20_000  # the tokenizer sees the start of every training file
SEQ_LEN = 256
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
    steps=1440,
    batch_size=16,
    grad_accum=1,
    lr=2.5e-3,
    min_lr_ratio=0.05,
    warmup_steps=60,
    weight_decay=0.1,
    eval_every=240,
    eval_rows=0,
    checkpoint_every=40,
    log_every=20,
    seed=0,
)

# Line completion is what an editor asks of a small model most: whole lines get the largest share.
FIM_OPTIONS = FimOptions(
    fim_rate=0.9,
    spm_rate=0.5,
    splits="syntax",
    kind_weights={
        "line": 0.4,
        "lines": 0.1,
        "statement": 0.1,
        "expression": 0.1,
        "line_tail": 0.2,
        "random": 0.1,
    },
)
DATA_PASSES = 2  # differently cut copies of the corpus (the run covers about all of them)
PIECE_TOKENS = (32, SEQ_LEN)  # window lengths: several FIM examples per row on average
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


def training_documents(files: dict[str, str]) -> list[Document]:
    """The library code (no tests, no generated tables, nothing held out) in packing order."""
    kept = {
        p: t
        for p, t in files.items()
        if p not in HELD_OUT_MODULES and not is_test_file(p) and not is_generated_data(p)
    }
    return [Document(p, kept[p]) for p in order_files(kept)]


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
        texts = [d.text[:TOKENIZER_CHARS_PER_FILE] for d in training_documents(files)]
        train_tokenizer(texts, tokenizer_file, VOCAB_SIZE)
        log(f"tokenizer: {VOCAB_SIZE} pieces in {time.monotonic() - started:.0f} s")
    tokenizer = Tokenizer.from_file(tokenizer_file)
    if not rows_file.is_file():
        started = time.monotonic()
        documents = training_documents(files)
        # Each pass cuts and FIM-transforms the corpus afresh: new middles, same text.
        train_rows = torch.cat(
            [_rows(documents, tokenizer, DATA_SEED + k) for k in range(DATA_PASSES)]
        )
        held_rows = _rows(held_out_documents(files), tokenizer, HELD_OUT_SEED)
        torch.save({"train": train_rows, "held_out": held_rows}, rows_file)
        log(f"data: {len(train_rows)} rows in {time.monotonic() - started:.0f} s")
    rows = torch.load(rows_file, weights_only=True)
    return tokenizer, rows["train"], rows["held_out"]


def _rows(documents: list[Document], tokenizer: Tokenizer, seed: int) -> torch.Tensor:
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
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_rows": len(train_rows),
        "python": sysconfig.get_python_version(),
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
    from codegemma.engine import load
    from codegemma.training.line_infilling import line_tasks, score_line_tasks

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
    from codegemma.engine import load
    from codegemma.training.humaneval_infill import humaneval_single_line

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


def install(out: str | Path) -> Path:
    """Copy the finished model files of run `out` into the package's default model folder."""
    from codegemma.default_model import default_model_dir

    target = default_model_dir()
    for name in ("config.json", "model.safetensors", "tokenizer.model", "training.json"):
        shutil.copyfile(Path(out) / "model" / name, target / name)
    return target
