"""The options every command that runs a model shares (--model, --dtype, --quantize, ...), and
loading the engine they describe: below the commands that use them, so that none imports the
`codegemma` command itself."""

from __future__ import annotations

import argparse
import os

from codegemma.acceleration import KERNEL_CHOICES
from codegemma.engine import CodeGemma, load
from codegemma.generation import DEFAULT_SPECULATION

MODEL_ENV = "CODEGEMMA_MODEL"


def model_options(parser: argparse.ArgumentParser) -> None:
    """Add --model, --dtype, --device, --quantize, --kernels, --threads and --speculate to
    `parser`."""
    parser.add_argument(
        "--model",
        default=os.environ.get(MODEL_ENV),
        help=f"model directory or Hugging Face id (default: ${MODEL_ENV}, else the shipped model)",
    )
    parser.add_argument("--dtype", help="bfloat16 (default) or float32")
    parser.add_argument("--device", help="cpu (default) or cuda")
    parser.add_argument(
        "--quantize",
        choices=("int8", "int4"),
        help="quantize weights at load (a `codegemma quantize` checkpoint needs no flag)",
    )
    parser.add_argument(
        "--kernels",
        choices=KERNEL_CHOICES,
        default="auto",
        help="native C kernels (auto: where the CPU supports them) or plain PyTorch",
    )
    parser.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    parser.add_argument(
        "--speculate",
        type=_speculation,
        default=DEFAULT_SPECULATION,
        metavar="N",
        help="check up to N tokens drafted from the text itself with each step, 0 to 16 "
        f"(0: off; default {DEFAULT_SPECULATION}); the output is the same either way",
    )


def _speculation(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 16:
        raise argparse.ArgumentTypeError(f"must be 0 to 16, not {value}")
    return value


def load_model(args: argparse.Namespace) -> CodeGemma:
    """The engine `model_options` describe; no --model and no $CODEGEMMA_MODEL: the small
    model shipped inside the package."""
    return load(
        args.model or None,
        dtype=args.dtype,
        device=args.device,
        quantize=args.quantize,
        kernels=args.kernels,
        threads=args.threads,
        speculate=args.speculate,
    )
