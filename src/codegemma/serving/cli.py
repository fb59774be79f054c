"""`codegemma serve`: the completion server for editors."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from codegemma.fim import DEFAULT_FIM_MODE
from codegemma.generation import PREFILL_CHUNK
from codegemma.serving.scheduler import DEFAULT_MAX_ACTIVE

API_KEY_ENV = "CODEGEMMA_API_KEY"


def register(commands) -> None:
    """Add the `serve` subcommand to the `codegemma` parser."""
    from codegemma.cli import model_options

    serve = commands.add_parser(
        "serve",
        help="serve editors over HTTP (llama.cpp, OpenAI and Ollama formats)",
        description="Serve code completion and chat to editors. Endpoints: llama.cpp "
        "(/infill, /completion, /health), OpenAI (/v1/completions, /v1/chat/completions, "
        "/v1/models) and Ollama (/api/generate, /api/chat, /api/tags).",
    )
    model_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require this key as 'Authorization: Bearer KEY' (default: ${API_KEY_ENV})",
    )
    serve.add_argument("--alias", default="codegemma", help="the model name clients use")
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
    serve.add_argument("--cache-mib", type=int, default=1024, help="memory for kept KV caches")
    serve.add_argument(
        "--max-active",
        type=int,
        default=DEFAULT_MAX_ACTIVE,
        help="requests in the running batch (each step decodes all of them in one pass)",
    )
    serve.add_argument(
        "--prefill-chunk", type=int, default=PREFILL_CHUNK, help="prompt tokens per step"
    )
    serve.add_argument("--max-body-mib", type=float, default=8.0, help="largest request body")
    serve.add_argument("--log-level", default="warning")
    serve.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from codegemma.cli import load_model
    from codegemma.serving.app import create_app, model_info
    from codegemma.serving.scheduler import Scheduler

    if not _is_loopback(args.host) and not args.api_key:
        print(f"warning: serving {args.host} without --api-key", file=sys.stderr)
    lm = load_model(args)
    scheduler = Scheduler(
        lm,
        cache_bytes=args.cache_mib << 20,
        max_active=args.max_active,
        prefill_chunk=args.prefill_chunk,
        fim_mode=args.fim_mode,
        stable_prefix=not args.no_stable_prefix,
    ).start()
    app = create_app(
        scheduler,
        model_info(lm, args.alias),
        api_key=args.api_key,
        max_body_bytes=int(args.max_body_mib * (1 << 20)),
    )
    print(f"serving {lm.name} as '{args.alias}' on http://{args.host}:{args.port}", file=sys.stderr)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        scheduler.close()
        lm.close()
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
