"""The `codegemma` command: complete, generate, chat, and a demo model for trying it out."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from codegemma.convert import TARGETS, convert_checkpoint, quantize_checkpoint
from codegemma.cursor import read_source, split_at_cursor
from codegemma.devices import DTYPES
from codegemma.errors import CodeGemmaError, InvalidRequestError
from codegemma.evaluation import cli as evaluation_cli
from codegemma.gguf.writer import FILE_TYPES
from codegemma.model_args import load_model, model_options
from codegemma.random_model import make_demo_model
from codegemma.retrieval import cli as retrieval_cli
from codegemma.serving import cli as serving_cli
from codegemma.tokenizer import TokenizerError
from codegemma.training import cli as training_cli


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (CodeGemmaError, TokenizerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codegemma", description=__doc__)
    commands = parser.add_subparsers(title="commands")

    complete = commands.add_parser("complete", help="fill in code at a cursor (FIM)")
    model_options(complete)
    source = complete.add_mutually_exclusive_group(required=True)
    source.add_argument("--prefix", help="code before the cursor")
    source.add_argument("--file", type=Path, help="a source file to complete inside")
    complete.add_argument("--suffix", default="", help="code after the cursor (with --prefix)")
    complete.add_argument("--cursor", help="LINE:COL of the cursor in --file (1-based)")
    complete.add_argument("--mode", choices=("psm", "spm"), default="psm", help="FIM prompt order")
    complete.add_argument(
        "--context-file",
        type=Path,
        action="append",
        default=[],
        help="another file to show the model first (repeatable)",
    )
    complete.add_argument(
        "--repo", type=Path, help="take context from this repository (see `codegemma index`)"
    )
    complete.add_argument("--repo-tokens", type=int, help="tokens of --repo context")
    complete.add_argument("--whole-file", action="store_true", help="print the completed file")
    generation_options(complete)
    complete.set_defaults(run=_run_complete)

    generate = commands.add_parser("generate", help="continue a prompt")
    model_options(generate)
    generate.add_argument("prompt", help="the prompt text ('-' reads standard input)")
    generation_options(generate)
    generate.set_defaults(run=_run_generate)

    chat = commands.add_parser("chat", help="chat with an instruction-tuned model")
    model_options(chat)
    chat.add_argument("--system", help="system text, folded into the first user turn")
    generation_options(chat, default_max=512)
    chat.set_defaults(run=_run_chat)

    quantize = commands.add_parser(
        "quantize", help="write an int8 or int4 copy of a checkpoint (loads fast, small)"
    )
    quantize.add_argument("input", help="model directory, GGUF file or Hugging Face id")
    quantize.add_argument("output", type=Path, help="directory to write")
    quantize.add_argument("--bits", type=int, choices=(8, 4), required=True)
    quantize.set_defaults(run=_run_quantize)

    demo = commands.add_parser(
        "make-demo-model", help="write a tiny RANDOM-weight model (for trying the tools only)"
    )
    demo.add_argument("out", type=Path, help="directory to create")
    demo.set_defaults(run=_run_make_demo)
    # The other commands: each `register(commands)` takes argparse's subparsers object; its
    # parsers set `run=` to a function of the parsed args returning an exit code.
    for register in (
        evaluation_cli.register,
        _register_convert,
        retrieval_cli.register,
        serving_cli.register,
        training_cli.register,
    ):
        register(commands)
    return parser


def _register_convert(commands) -> None:
    """Add the `convert` subcommand."""
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
    parser.add_argument("--to", choices=TARGETS, required=True, help="output format")
    parser.add_argument(
        "--type", choices=tuple(FILE_TYPES), help="GGUF weight type (--to gguf; default f16)"
    )
    parser.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        help="weight dtype (--to hf; default: the file's float type, bfloat16 if quantized)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing destination")
    parser.set_defaults(run=_run_convert)


def generation_options(parser: argparse.ArgumentParser, default_max: int = 128) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=default_max)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--truncate", action="store_true", help="cut a too-long prompt to fit")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _options(args) -> dict:
    return {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
        "stop": args.stop or None,
        "truncate": args.truncate,
    }


def _run_complete(args) -> int:
    if args.file is not None:
        if not args.cursor:
            raise InvalidRequestError("--file needs --cursor LINE:COL")
        prefix, suffix = split_at_cursor(read_source(args.file), args.cursor)
        path = str(args.file)
    else:
        if args.cursor:
            raise InvalidRequestError("--cursor goes with --file")
        prefix, suffix, path = args.prefix, args.suffix, None
    files = [(str(p), read_source(p)) for p in args.context_file]
    lm = load_model(args)
    retrieval = None
    if args.repo is not None:
        retrieval, repo_path = retrieval_cli.repo_context(
            lm, args.repo, prefix, suffix, args.file, args.repo_tokens
        )
        files += retrieval.files
        path = repo_path or path
    stream = lm.stream_complete(
        prefix,
        suffix,
        files=files or None,
        path=path if files else None,
        mode=args.mode,
        **_options(args),
    )
    if args.whole_file:
        completion = _collect(stream)
        text = prefix + completion.text + suffix
        _print_result(args, text, completion, retrieval)
        return 0
    return _emit(args, stream, retrieval)


def _run_generate(args) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    lm = load_model(args)
    return _emit(args, lm.stream_generate(prompt, **_options(args)))


def _run_chat(args) -> int:
    lm = load_model(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    if not sys.stdin.isatty():
        message = sys.stdin.read()
        return _emit(
            args, lm.stream_chat([*system, {"role": "user", "content": message}], **_options(args))
        )
    history: list[dict] = []
    print("codegemma chat: type a message; an empty line or Ctrl-D ends.", file=sys.stderr)
    while True:
        try:
            message = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not message.strip():
            return 0
        history.append({"role": "user", "content": message})
        stream = lm.stream_chat([*system, *history], **_options(args))
        reply = "".join(_echo(stream))
        print()
        history.append({"role": "assistant", "content": reply})


def _run_quantize(args) -> int:
    report = quantize_checkpoint(args.input, args.output, "int8" if args.bits == 8 else "int4")
    print(report)
    return 0


def _run_convert(args) -> int:
    lines = convert_checkpoint(
        args.source, args.dest, args.to, file_type=args.type, dtype=args.dtype, force=args.force
    )
    for line in lines:
        print(line)
    return 0


def _run_make_demo(args) -> int:
    directory = make_demo_model(args.out)
    print(f"wrote a tiny random-weight demo model to {directory} (its output is noise)")
    return 0


def _echo(stream):
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
        yield piece


def _collect(stream):
    for _ in stream:
        pass
    return stream.completion


def _emit(args, stream, retrieval=None) -> int:
    """Stream to a terminal; otherwise (or with --json) print once at the end."""
    if sys.stdout.isatty() and not args.json:
        for _ in _echo(stream):
            pass
        print()
        return 0
    completion = _collect(stream)
    _print_result(args, completion.text, completion, retrieval)
    return 0


def _print_result(args, text: str, completion, retrieval=None) -> None:
    """`retrieval`: the RepoContext of --repo, reported in --json output."""
    if args.json:
        usage = completion.usage
        extra = {"retrieval": retrieval.as_dict()} if retrieval is not None else {}
        print(
            json.dumps(
                {
                    "text": text,
                    "finish_reason": completion.finish_reason,
                    "stop": completion.stop,
                    "usage": {
                        "prompt_tokens": usage.prompt_tokens,
                        "completion_tokens": usage.completion_tokens,
                        "prompt_seconds": round(usage.prompt_seconds, 4),
                        "generation_seconds": round(usage.generation_seconds, 4),
                        "truncated_tokens": usage.truncated_tokens,
                    },
                    **extra,
                },
                ensure_ascii=False,
            )
        )
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
