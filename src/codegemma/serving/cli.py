"""`codegemma serve`: the completion server for editors.

Every flag is checked before the model is loaded: a bad value ends the command with one line
on stderr and exit code 2. The listening socket is bound first too, so a port in use is
reported before loading.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
import urllib.parse
from pathlib import Path
from typing import NoReturn

from codegemma.fim import DEFAULT_FIM_MODE
from codegemma.generation import PREFILL_CHUNK
from codegemma.model_args import load_model, model_options
from codegemma.retrieval.context import default_budget
from codegemma.serving.cluster import launch
from codegemma.serving.cluster.options import ClusterOptions
from codegemma.serving.repo import RepoSource
from codegemma.serving.scheduler import DEFAULT_MAX_ACTIVE, Scheduler

API_KEY_ENV = "CODEGEMMA_API_KEY"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def register(commands) -> None:
    """Add the `serve` subcommand to the `codegemma` parser."""
    serve = commands.add_parser(
        "serve",
        help="serve editors over HTTP (llama.cpp, OpenAI and Ollama formats)",
        description="Serve code completion and chat to editors. Endpoints: llama.cpp "
        "(/infill, /completion, /props, /slots, /metrics, /tokenize, /embedding, /health), "
        "OpenAI (/v1/completions, /v1/chat/completions, /v1/models, /v1/embeddings) and "
        "Ollama (/api/generate, /api/chat, /api/embed, /api/tags, /api/ps, /api/show); a "
        "playground at /.",
    )
    serve.error = _one_line_error  # a bad flag: one line and exit code 2, not the usage
    model_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    serve.add_argument("--port", type=_port, default=8080, help="TCP port (1-65535)")
    serve.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require this key as 'Authorization: Bearer KEY' (default: ${API_KEY_ENV})",
    )
    serve.add_argument(
        "--api-key-file", type=Path, help="read the key from the first line of this file"
    )
    serve.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        type=_origin,
        help="let web pages of this origin (e.g. http://localhost:3000, or *) call the API; "
        "repeatable",
    )
    serve.add_argument(
        "--alias", type=_name, default="codegemma", help="the model name clients use"
    )
    serve.add_argument(
        "--fim-mode",
        choices=("spm", "psm"),
        default=DEFAULT_FIM_MODE,
        help="FIM prompt order when a request does not say (spm, the default: typing only "
        "appends to the prompt, so the cache is reused)",
    )
    serve.add_argument(
        "--no-stable-prefix",
        action="store_true",
        help="use long FIM prefixes as sent, instead of starting them at a stable line",
    )
    serve.add_argument(
        "--cache-mib", type=_count(0), default=1024, help="memory for kept KV caches"
    )
    serve.add_argument(
        "--max-active",
        type=_count(1),
        default=DEFAULT_MAX_ACTIVE,
        help="requests in the running batch (each step decodes all of them in one pass)",
    )
    serve.add_argument(
        "--prefill-chunk", type=_count(1), default=PREFILL_CHUNK, help="prompt tokens per step"
    )
    serve.add_argument(
        "--max-body-mib", type=_positive_number, default=8.0, help="largest request body"
    )
    serve.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="warning",
        help="info: one access line per request (method, path, status, tokens, ms)",
    )
    serve.add_argument(
        "--replicas",
        type=_count(1),
        help="run this many engine replicas on Ray Serve (extra 'cluster'), each editor kept on "
        "the replica holding its cache; --threads is then per replica (default: cores/replicas)",
    )
    serve.add_argument(
        "--ray-address",
        type=_name,
        help="join this Ray cluster (started with `ray start`; e.g. auto or HOST:6379) instead of "
        "starting one here; implies --replicas 1 unless given",
    )
    serve.add_argument(
        "--repo",
        type=Path,
        help="put chunks of this repository's other files before each FIM prompt (extra "
        "'repo'; indexed at start and kept up to date, see `codegemma index`)",
    )
    serve.add_argument(
        "--repo-tokens",
        type=_count(0),
        help="tokens of --repo context a request (default: a third of the context, at most 1024)",
    )
    serve.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    try:
        api_key = _api_key(args)
        _check_threads(args.threads)
        _check_repo(args)
        sock = _listen(args.host, args.port)
    except ValueError as exc:
        print(f"codegemma serve: error: {exc}", file=sys.stderr)
        return 2
    if args.replicas or args.ray_address:
        sock.close()  # Serve's proxy binds it; checked free above
        return _serve_cluster(args, api_key)
    with sock:
        return _serve(args, sock, api_key)


def _serve_cluster(args: argparse.Namespace, api_key: str | None) -> int:
    if not _is_loopback(args.host) and not api_key:
        print(f"warning: serving {args.host} without --api-key", file=sys.stderr)
    replicas = args.replicas or 1
    options = ClusterOptions(
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        quantize=args.quantize,
        kernels=args.kernels,
        speculate=args.speculate,
        threads=args.threads or max(1, (os.cpu_count() or 1) // replicas),
        replicas=replicas,
        alias=args.alias,
        fim_mode=args.fim_mode,
        stable_prefix=not args.no_stable_prefix,
        cache_mib=args.cache_mib,
        max_active=args.max_active,
        prefill_chunk=args.prefill_chunk,
        api_key=api_key,
        max_body_mib=args.max_body_mib,
        cors_origins=tuple(args.cors_origin),
        log_level=args.log_level,
    )
    return launch.run(options, host=args.host, port=args.port, ray_address=args.ray_address)


def _serve(args: argparse.Namespace, sock: socket.socket, api_key: str | None) -> int:
    import uvicorn  # extra 'serve'

    from codegemma.serving.app import create_app, model_info  # extra 'serve': fastapi

    _configure_logging(args.log_level)
    if not _is_loopback(args.host) and not api_key:
        print(f"warning: serving {args.host} without --api-key", file=sys.stderr)
    lm = load_model(args)
    info = model_info(lm, args.alias)
    name = lm.name
    scheduler = Scheduler(
        lm,
        cache_bytes=args.cache_mib << 20,
        max_active=args.max_active,
        prefill_chunk=args.prefill_chunk,
        fim_mode=args.fim_mode,
        stable_prefix=not args.no_stable_prefix,
        loader=lambda: load_model(args),  # after an unload (Ollama keep_alive 0)
        repo=_repo(args, lm),
    ).start()
    del lm  # the scheduler owns it: an unload frees it
    app = create_app(
        scheduler,
        info,
        api_key=api_key,
        max_body_bytes=int(args.max_body_mib * (1 << 20)),
        cors_origins=args.cors_origin,
    )
    host, port = sock.getsockname()[:2]
    print(f"serving {name} as '{args.alias}' on http://{host}:{port}", file=sys.stderr)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        scheduler.close()
    return 0


def _repo(args: argparse.Namespace, lm) -> RepoSource | None:
    """The repository context source of --repo (indexed now, incrementally), or None."""
    if args.repo is None:
        return None
    budget = args.repo_tokens if args.repo_tokens is not None else default_budget(lm.context_length)
    source = RepoSource(args.repo, lm.tokenizer, budget)
    report = source.report
    print(
        f"{args.repo}: {report.files} files, {report.chunks} chunks indexed for context "
        f"({budget} tokens a request)",
        file=sys.stderr,
    )
    return source


def _one_line_error(message: str) -> NoReturn:
    print(f"codegemma serve: error: {message}", file=sys.stderr)
    sys.exit(2)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a number from 1 to 65535, got {text!r}")
    return int(text)


def _count(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _name(text: str) -> str:
    if not text or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"must be a name without spaces, got {text!r}")
    return text


def _origin(text: str) -> str:
    """ "*" or scheme://host[:port], as browsers send it in `Origin`."""
    if text == "*":
        return text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        raise argparse.ArgumentTypeError(
            f"an origin is * or scheme://host[:port] (e.g. http://localhost:3000), got {text!r}"
        )
    return text


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file is None:
        return args.api_key or None
    if args.api_key and args.api_key != os.environ.get(API_KEY_ENV):
        raise ValueError("give --api-key or --api-key-file, not both")
    try:
        lines = args.api_key_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--api-key-file: cannot read {args.api_key_file}: {exc}") from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise ValueError(f"--api-key-file: {args.api_key_file} holds no key on its first line")
    return key


def _check_repo(args: argparse.Namespace) -> None:
    if args.repo is None:
        if args.repo_tokens is not None:
            raise ValueError("--repo-tokens needs --repo")
        return
    if not args.repo.is_dir():
        raise ValueError(f"--repo: {args.repo} is not a directory")
    if args.replicas or args.ray_address:
        raise ValueError("--repo serves one process: it cannot be combined with --replicas")


def _check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (ValueError saying why not)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ValueError(f"--host {host!r} is not an address of this machine: {exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _configure_logging(level: str) -> None:
    """Our loggers (the access log among them) print to stderr at `level`."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("codegemma")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if level == "trace" else level.upper())


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
