"""`codegemma convert`: Hugging Face directory <-> GGUF file; keras-hub presets, Flax
checkpoints and Jlama directories -> either."""

from __future__ import annotations

import argparse
from pathlib import Path

from codegemma.errors import InvalidRequestError


def register(commands) -> None:
    """Add the `convert` subcommand to argparse's subparsers object."""
    from codegemma.gguf.writer import FILE_TYPES, HF_DTYPES

    parser = commands.add_parser(
        "convert",
        help="convert a Hugging Face model directory to GGUF, a GGUF file to a directory, or a "
        "keras-hub preset, Flax checkpoint or Jlama directory to either",
    )
    parser.add_argument(
        "source",
        type=Path,
        help="model directory (--to gguf), GGUF file (--to hf), or a keras-hub preset, Flax "
        "checkpoint or Jlama directory (either)",
    )
    parser.add_argument("dest", type=Path, help="GGUF file or directory to create")
    parser.add_argument("--to", choices=("gguf", "hf"), required=True, help="output format")
    parser.add_argument(
        "--type", choices=tuple(FILE_TYPES), help="GGUF weight type (--to gguf; default f16)"
    )
    parser.add_argument(
        "--dtype",
        choices=tuple(HF_DTYPES),
        help="weight dtype (--to hf; default: the file's float type, bfloat16 if quantized)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing destination")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from codegemma.gguf.reader import is_gguf_file
    from codegemma.gguf.writer import write_gguf, write_hf
    from codegemma.sources.convert import write_gguf_from_source, write_hf_from_source
    from codegemma.sources.detect import detect_source

    _check_destination(args.dest, args.force)
    source = detect_source(args.source)
    if args.to == "gguf":
        if args.dtype:
            raise InvalidRequestError("--dtype applies to --to hf; use --type for GGUF")
        if is_gguf_file(args.source):
            raise InvalidRequestError(f"{args.source} is already GGUF; give a model directory")
        write = write_gguf_from_source if source else write_gguf
        path = write(args.source, args.dest, args.type or "f16")
        print(f"wrote {path} ({(args.type or 'f16').upper()}, {path.stat().st_size:,} bytes)")
        return 0
    if args.type:
        raise InvalidRequestError("--type applies to --to gguf; use --dtype for --to hf")
    if source:
        notes = write_hf_from_source(args.source, args.dest, args.dtype)
    elif is_gguf_file(args.source):
        notes = write_hf(args.source, args.dest, args.dtype)
    else:
        raise InvalidRequestError(
            f"{args.source} is not a GGUF file, keras-hub preset, Flax checkpoint or Jlama "
            "model directory"
        )
    print(f"wrote {args.dest}")
    for note in notes:
        print(f"  {note}")
    return 0


def _check_destination(dest: Path, force: bool) -> None:
    occupied = dest.is_file() or (dest.is_dir() and any(dest.iterdir()))
    if occupied and not force:
        raise InvalidRequestError(f"{dest} exists; pass --force to replace it")
