"""Quality of int8 / int4 weights: logits cosine similarity and held-out perplexity change.

    python benchmarks/quant_quality.py [MODEL] [--no-append]

MODEL defaults to a tiny model trained here for a few seconds on Python source (the same
recipe as the test suite); pass a real checkpoint directory to measure that instead. The
held-out text is a standard-library module the model did not train on.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import sys
import tempfile
from pathlib import Path

import torch

import codegemma

REPO = Path(__file__).resolve().parent.parent


def tiny_trained_model(directory: Path) -> Path:
    """Train a tokenizer and a small model on a few stdlib files (a few seconds on a CPU)."""
    import json as json_module
    import textwrap

    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import tiny_config, train_tiny

    from codegemma.checkpoint.hf_dir import save_hf_checkpoint
    from codegemma.random_model import random_model
    from codegemma.tokenizer import Tokenizer
    from codegemma.tokenizer_training import train_tokenizer

    texts = [inspect.getsource(m) for m in (textwrap, json_module.decoder, json_module.encoder)]
    train_tokenizer(texts, directory / "tokenizer.model", 1024)
    tokenizer = Tokenizer.from_dir(directory)
    ids = torch.tensor(tokenizer.encode("\n".join(texts)))
    config = tiny_config(tokenizer.vocab_size, hidden_size=128, intermediate_size=256)
    model = train_tiny(random_model(config), ids, steps=300)
    save_hf_checkpoint(model, directory)
    return directory


def held_out_ids(lm: codegemma.CodeGemma, limit: int) -> list[int]:
    import shlex

    return lm.tokenizer.encode(inspect.getsource(shlex))[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", nargs="?")
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(tiny_trained_model(Path(tmp)))
        reference = codegemma.load(model, dtype="float32", kernels="torch")
        ids = held_out_ids(reference, args.tokens)
        target = torch.tensor(ids[1:])
        expected = reference.logits(ids)
        rows = {}
        for mode in (None, "int8", "int4"):
            lm = codegemma.load(model, quantize=mode)
            logits = lm.logits(ids)
            cosine = torch.nn.functional.cosine_similarity(
                logits.flatten(), expected.flatten(), dim=0
            ).item()
            nll = torch.nn.functional.cross_entropy(logits[:-1], target).item()
            rows[mode or "bf16"] = {"cosine": cosine, "perplexity": float(torch.tensor(nll).exp())}
        base = float(torch.nn.functional.cross_entropy(expected[:-1], target).exp())
    lines = [
        "| weights | logits cosine vs float32 | held-out perplexity | change |",
        "|---|---|---|---|",
    ]
    lines.append(f"| float32 | 1.00000 | {base:.3f} | - |")
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['cosine']:.5f} | {r['perplexity']:.3f} | "
            f"{100 * (r['perplexity'] / base - 1):+.2f}% |"
        )
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    report = (
        f"\n## {when} — quantization quality ({args.model or 'tiny model trained on stdlib'}, "
        f"{len(ids)} held-out tokens of shlex.py)\n\nCommand: `python benchmarks/quant_quality.py"
        f"{' ' + args.model if args.model else ''}`\n\n" + "\n".join(lines) + "\n"
    )
    print(report)
    print(json.dumps(rows))
    if not args.no_append:
        with open(REPO / "BENCHMARKS.md", "a") as f:
            f.write(report)


if __name__ == "__main__":
    main()
