"""A real server on a free loopback port for the serving tests, and models that misbehave."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import torch
import uvicorn
from tiny_models import ScriptedModel, tiny_config

from codegemma.engine import CodeGemma
from codegemma.random_model import random_model
from codegemma.serving.app import create_app, model_info
from codegemma.serving.scheduler import Scheduler


def lively_engine(tokenizer, seed: int = 0, **config) -> CodeGemma:
    """A tiny random float32 model with its projections scaled up, so that it says varied
    things (plain random weights repeat one token), on the plain PyTorch path. `config`
    overrides fields of the tiny config (e.g. a longer context)."""
    model = random_model(tiny_config(tokenizer.vocab_size, **config), seed=seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("proj.weight"):
                param.mul_(4)
    return CodeGemma(model.eval(), tokenizer, name="tiny")


@contextlib.contextmanager
def running_server(
    lm, *, api_key=None, max_body_bytes=1 << 20, fim_mode="spm", cors_origins=(), **scheduler
):
    """Serve `lm` on 127.0.0.1 at a free port; yields (base URL, scheduler); always shuts down."""
    scheduler.setdefault("threads", 1)  # tiny models; a busy machine stalls OpenMP teams
    jobs = Scheduler(lm, fim_mode=fim_mode, **scheduler).start()
    app = create_app(
        jobs,
        model_info(lm, "tiny"),
        api_key=api_key,
        max_body_bytes=max_body_bytes,
        cors_origins=cors_origins,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", jobs
    finally:
        server.should_exit = True
        thread.join(10)
        jobs.close()
        sock.close()


class SlowModel(ScriptedModel):
    """A scripted model whose every forward pass takes `delay` seconds; counts its passes and
    keeps the token ids each one was given."""

    def __init__(self, config, script, delay: float) -> None:
        super().__init__(config, script)
        self.delay = delay
        self.inputs: list[list[int]] = []

    def forward(self, input_ids, **kwargs):
        self.inputs.append(input_ids.flatten().tolist())
        time.sleep(self.delay)
        return super().forward(input_ids, **kwargs)


class PoisonedModel(ScriptedModel):
    """A scripted model that raises whenever its input holds the token `poison`."""

    def __init__(self, config, script, poison: int) -> None:
        super().__init__(config, script)
        self.poison = poison

    def forward(self, input_ids, **kwargs):
        if (input_ids == self.poison).any():
            raise RuntimeError("poisoned input")
        return super().forward(input_ids, **kwargs)
