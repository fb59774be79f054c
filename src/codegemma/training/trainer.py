"""A small trainer for Gemma-architecture models: full training or LoRA, resumable.

Rows come from `dataset.pack_rows`. Every `<pad>` target is ignored. Each optimizer step sees
`batch_size * grad_accum` rows in an order fixed by the seed, so a run stopped and resumed from
its checkpoint continues with exactly the rows it would have seen. Only trainable parameters
(and the optimizer state) go into the checkpoint: for LoRA that is the adapter alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from codegemma.model import GemmaForCausalLM

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one run."""

    steps: int = 1000  # optimizer steps in the whole run
    batch_size: int = 8  # rows per forward pass
    grad_accum: int = 1  # forward passes whose gradients add up to one step
    lr: float = 1e-3  # peak learning rate (after warmup)
    min_lr_ratio: float = 0.1  # the cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 50  # linear warmup from 0
    weight_decay: float = 0.1  # AdamW decay of matrices (not of norms)
    grad_clip: float = 1.0  # max global gradient norm
    dtype: str = "float32"  # "bfloat16": autocast matmuls (parameters stay as they are)
    eval_every: int = 100  # steps between held-out evaluations (and one at the end)
    eval_rows: int = 64  # held-out rows per evaluation (0: all of them)
    checkpoint_every: int = 50  # steps between checkpoints (and one at the end)
    log_every: int = 10  # steps between progress lines
    seed: int = 0  # row order
    max_seconds: float | None = None  # stop this invocation (checkpointed) after so long
    compile: bool = False  # torch.compile the training loss (fuses the elementwise work)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        floor = self.lr * self.min_lr_ratio
        return floor + (self.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclasses.dataclass
class TrainResult:
    """Where a run stands when `train` returns."""

    step: int  # optimizer steps done, over all invocations
    tokens: int  # non-pad training tokens seen
    train_loss: float | None  # mean loss of the last logged window
    eval_loss: float | None  # last held-out loss
    finished: bool  # step == config.steps
    seconds: float = 0.0  # wall time spent in optimizer steps, over all invocations


def causal_lm_loss(model: GemmaForCausalLM, rows: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Mean next-token cross-entropy over the non-pad targets of `rows` (B, T)."""
    rows = rows.long()
    logits = model(rows[:, :-1], logits_positions=slice(None))  # (B, T-1, V)
    targets = rows[:, 1:].masked_fill(rows[:, 1:] == pad_id, -100)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)


@torch.no_grad()
def evaluate(
    model: GemmaForCausalLM,
    rows: torch.Tensor,
    pad_id: int,
    *,
    batch_size: int = 8,
    dtype="float32",
) -> float:
    """Token-weighted mean loss over `rows`."""
    was_training = model.training
    model.eval()
    device = model.model.embed_tokens.weight.device
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        batch = rows[i : i + batch_size].to(device)
        tokens = int((batch[:, 1:] != pad_id).sum())
        with _autocast(device, dtype):
            total += float(causal_lm_loss(model, batch, pad_id)) * tokens
        count += tokens
    model.train(was_training)
    return total / max(1, count)


def make_trainable(model: GemmaForCausalLM) -> GemmaForCausalLM:
    """Give every parameter its own float32 memory (not a view of a file) and enable grads."""
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            data = param.detach().to(torch.float32, copy=True)
            setattr(module, name, torch.nn.Parameter(data, requires_grad=True))
    return model.train()


def train(
    model: GemmaForCausalLM,
    train_rows: torch.Tensor,
    eval_rows: torch.Tensor | None,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    pad_id: int,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train the parameters of `model` that require grad, resuming from `run_dir` if it has a
    checkpoint; progress goes to `log` and to `run_dir/train_log.jsonl`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = _optimizer(params, config)
    state = _resume(run_dir / CHECKPOINT, model, params, optimizer, config, log)
    order = _RowOrder(len(train_rows), config.seed)
    # Compiled once per invocation (the first step pays for it); evaluation stays eager.
    loss_fn = torch.compile(causal_lm_loss) if config.compile else causal_lm_loss
    progress = _Progress(run_dir, log)
    model.train()
    while state["step"] < config.steps:
        step = state["step"]
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        started = time.monotonic()
        loss, tokens = _one_step(
            model, optimizer, params, train_rows, order, step, config, pad_id, loss_fn
        )
        state["seconds"] = state.get("seconds", 0.0) + time.monotonic() - started
        state["step"] += 1
        state["tokens"] += tokens
        progress.add(loss, tokens)
        done = state["step"] == config.steps
        out_of_time = config.max_seconds is not None and progress.elapsed() >= config.max_seconds
        if state["step"] % config.log_every == 0 or done:
            state["train_loss"] = progress.report(state, config.lr_at(step))
        paused = time.monotonic()  # evaluation and saving do not count in tokens/s
        if eval_rows is not None and (state["step"] % config.eval_every == 0 or done):
            subset = eval_rows[: config.eval_rows] if config.eval_rows else eval_rows
            state["eval_loss"] = evaluate(
                model, subset, pad_id, batch_size=config.batch_size, dtype=config.dtype
            )
            model.train()
            progress.write({"step": state["step"], "eval_loss": round(state["eval_loss"], 4)})
        if state["step"] % config.checkpoint_every == 0 or done or out_of_time:
            _save(run_dir / CHECKPOINT, params, optimizer, state, config)
        progress.paused += time.monotonic() - paused
        if out_of_time and not done:
            log(f"stopping after {config.max_seconds:.0f} s; run again to resume")
            break
    return TrainResult(
        step=state["step"],
        tokens=state["tokens"],
        train_loss=state.get("train_loss"),
        eval_loss=state.get("eval_loss"),
        finished=state["step"] >= config.steps,
        seconds=state.get("seconds", 0.0),
    )


def _one_step(model, optimizer, params, rows, order, step: int, config, pad_id: int, loss_fn):
    """One optimizer step over `grad_accum` batches; returns (mean loss, target tokens)."""
    device = next(iter(params.values())).device
    loss_sum, tokens = 0.0, 0
    for micro in range(config.grad_accum):
        first = (step * config.grad_accum + micro) * config.batch_size
        batch = rows[order.indices(first, config.batch_size)].to(device)
        with _autocast(device, config.dtype):
            loss = loss_fn(model, batch, pad_id)
        (loss / config.grad_accum).backward()
        loss_sum += loss.item() / config.grad_accum
        tokens += int((batch[:, 1:] != pad_id).sum())
    torch.nn.utils.clip_grad_norm_(list(params.values()), config.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, tokens


class _Progress:
    """Loss and speed since the last report; lines go to the log and to train_log.jsonl."""

    def __init__(self, run_dir: Path, log: Callable[[str], None]) -> None:
        self.run_dir, self.log = run_dir, log
        self.started = self.last = time.monotonic()
        self.losses: list[float] = []
        self.tokens = 0
        self.paused = 0.0  # seconds since the last report spent outside training steps

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def add(self, loss: float, tokens: int) -> None:
        self.losses.append(loss)
        self.tokens += tokens

    def report(self, state: dict, lr: float) -> float:
        """Write a progress line; returns the mean training loss since the last one."""
        now = time.monotonic()
        mean = sum(self.losses) / len(self.losses)
        self.write(
            {
                "step": state["step"],
                "loss": round(mean, 4),
                "lr": lr,
                "tokens": state["tokens"],
                "tokens_per_s": round(self.tokens / max(now - self.last - self.paused, 1e-9), 1),
                "elapsed_s": round(now - self.started),
            }
        )
        self.losses, self.tokens, self.last, self.paused = [], 0, now, 0.0
        return mean

    def write(self, record: dict) -> None:
        with open(self.run_dir / LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.log(" ".join(f"{k} {_fmt(v)}" for k, v in record.items()))


class _RowOrder:
    """A fresh seeded permutation of the rows for every epoch."""

    def __init__(self, count: int, seed: int) -> None:
        if count < 1:
            raise ValueError("no training rows")
        self.count, self.seed = count, seed
        self._perms: dict[int, torch.Tensor] = {}

    def indices(self, first: int, size: int) -> torch.Tensor:
        """Row indices of global samples first, first+1, ..., first+size-1."""
        out = []
        for k in range(first, first + size):
            epoch, pos = divmod(k, self.count)
            if epoch not in self._perms:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perms = {epoch: torch.randperm(self.count, generator=generator)}
            out.append(int(self._perms[epoch][pos]))
        return torch.tensor(out)


def _optimizer(params: dict[str, torch.nn.Parameter], config: TrainConfig):
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), eps=1e-8)


def _autocast(device: torch.device, dtype: str):
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"
    )


def _resume(path: Path, model, params, optimizer, config: TrainConfig, log) -> dict:
    state = {"step": 0, "tokens": 0}
    if not path.is_file():
        return state
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if set(saved["params"]) != set(params):
        raise ValueError(f"{path} holds other parameters than this model trains")
    if saved["config"]["steps"] != config.steps or saved["config"]["seed"] != config.seed:
        raise ValueError(f"{path} was written with other steps/seed; use a new run directory")
    with torch.no_grad():
        for name, tensor in saved["params"].items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(saved["optimizer"])
    state.update(saved["state"])
    log(f"resumed from {path} at step {state['step']}")
    return state


def _save(path: Path, params, optimizer, state: dict, config: TrainConfig) -> None:
    """Write the checkpoint next to its final name, then rename: never a half-written file."""
    payload = {
        "params": {n: p.detach().cpu() for n, p in params.items()},
        "optimizer": optimizer.state_dict(),
        "state": dict(state),
        "config": dataclasses.asdict(config),
    }
    partial = path.with_suffix(".partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
