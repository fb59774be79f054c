"""Generation in layers: token steps, then text streams with stops, then whole results.

`decode_tokens` yields token ids for a batch of prompts; `stream_batch` turns them into text
pieces and one `Completion` per prompt. Everything above (API, CLI, server) uses `stream_batch`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence

import torch

from codegemma.detokenizer import StreamingDetokenizer
from codegemma.kv_cache import KVCache
from codegemma.model import GemmaForCausalLM
from codegemma.sampling import SamplingParams, make_generators, pick_tokens
from codegemma.stop_strings import StopStringFilter
from codegemma.tokenizer import Tokenizer


@dataclasses.dataclass
class Usage:
    """Token counts and wall-clock seconds of one generation."""

    prompt_tokens: int  # tokens fed to the model, BOS included
    completion_tokens: int  # tokens generated, the stop token included
    prompt_seconds: float  # prefill time (shared by all prompts of a batch)
    generation_seconds: float  # time from the end of prefill to this prompt's end
    truncated_tokens: int = 0  # prompt tokens dropped to fit the context (when asked to)

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.generation_seconds if self.generation_seconds else 0.0


@dataclasses.dataclass
class Completion:
    """The result of one prompt: text without any stop token or stop string."""

    text: str
    finish_reason: str  # "stop" (stop token or string) or "length" (token limit or context end)
    usage: Usage
    token_ids: list[int]  # generated ids, the stop token excluded
    stop: str | None = None  # the stop token text or stop string that ended generation


@dataclasses.dataclass(frozen=True)
class StopConditions:
    """When one sequence is over."""

    max_new_tokens: int
    stop_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()


PREFILL_CHUNK = 256  # prompt tokens evaluated per forward pass


def decode_tokens(
    model: GemmaForCausalLM,
    prompts: Sequence[Sequence[int]],
    *,
    capacity: int,
    params: SamplingParams,
    vocab_limit: int,
    finished: set[int],
) -> Iterator[dict[int, int]]:
    """Yield {row: next token id} for every unfinished row, one decoding step at a time.

    Prompts are left-padded into one batch. Rows the caller adds to `finished` are dropped
    from the batch before the next step. Stops when all rows are finished or the cache is full.
    """
    device = model.model.embed_tokens.weight.device
    config = model.config
    longest = max(len(p) for p in prompts)
    pad = torch.tensor([longest - len(p) for p in prompts], device=device)  # (B,)
    tokens = torch.zeros((len(prompts), longest), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
    cache = KVCache(
        config.num_hidden_layers,
        len(prompts),
        config.num_key_value_heads,
        capacity,
        config.head_dim,
        dtype=model.activation_dtype,
        device=device,
    )
    generators = make_generators(params, len(prompts))
    rows = list(range(len(prompts)))  # original index of each batch row
    # A long prompt is evaluated in chunks: activation memory stays bounded (an 8K-token
    # prompt at once needs several GB of MLP intermediates) and GEMMs stay large.
    while tokens.shape[1] > PREFILL_CHUNK:
        model(tokens[:, :PREFILL_CHUNK], cache=cache, pad=pad, logits_positions=slice(0, 0))
        tokens = tokens[:, PREFILL_CHUNK:]
    while rows:
        logits = model(tokens, cache=cache, pad=pad)[:, -1].float()  # (B, V)
        logits[:, vocab_limit:] = float("-inf")  # padded embedding rows are not real tokens
        picked = pick_tokens(logits, params, generators).tolist()
        yield dict(zip(rows, picked, strict=True))
        keep = [i for i, row in enumerate(rows) if row not in finished]
        if not keep or cache.length + 1 > cache.capacity:
            return
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=device)
            cache.select_rows(index)
            pad = pad.index_select(0, index)
            generators = [generators[i] for i in keep]
            rows = [rows[i] for i in keep]
            picked = [picked[i] for i in keep]
        tokens = torch.tensor(picked, dtype=torch.long, device=device)[:, None]  # (B, 1)


class _Sequence:
    """Text-level state of one prompt during generation."""

    def __init__(self, tokenizer: Tokenizer, stops: StopConditions) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.detokenizer = StreamingDetokenizer(tokenizer)
        self.filter = StopStringFilter(stops.stop_strings)
        self.token_ids: list[int] = []
        self.generated = 0
        self.text: list[str] = []
        self.finish_reason: str | None = None
        self.stop: str | None = None

    def push(self, token_id: int, context_full: bool) -> str:
        """Take one generated token; return the text it releases."""
        self.generated += 1
        if token_id in self.stops.stop_ids:
            self.finish_reason, self.stop = "stop", self.tokenizer.id_to_piece(token_id)
            return self._emit(self.filter.feed(self.detokenizer.flush()) + self.filter.flush())
        self.token_ids.append(token_id)
        piece = self.filter.feed(self.detokenizer.push(token_id))
        if self.filter.matched is not None:
            self.finish_reason, self.stop = "stop", self.filter.matched
            return self._emit(piece)
        if self.generated >= self.stops.max_new_tokens or context_full:
            self.finish_reason = "length"
            piece += self.filter.feed(self.detokenizer.flush())
            if self.filter.matched is not None:
                self.finish_reason, self.stop = "stop", self.filter.matched
            else:
                piece += self.filter.flush()
        return self._emit(piece)

    def _emit(self, piece: str) -> str:
        self.text.append(piece)
        return piece


def stream_batch(
    model: GemmaForCausalLM,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    stops: StopConditions,
    params: SamplingParams,
    *,
    context_length: int,
    truncated: Sequence[int] | None = None,
) -> Iterator[tuple[int, str | Completion]]:
    """Yield (row, text piece) as text becomes final, and (row, Completion) when a row ends."""
    capacity = min(context_length, max(len(p) for p in prompts) + stops.max_new_tokens)
    sequences = [_Sequence(tokenizer, stops) for _ in prompts]
    finished: set[int] = set()
    started = time.perf_counter()
    prefill_done = None
    steps = decode_tokens(
        model,
        prompts,
        capacity=capacity,
        params=params,
        vocab_limit=tokenizer.vocab_size,
        finished=finished,
    )
    longest = max(len(p) for p in prompts)
    for step, picked in enumerate(steps):
        now = time.perf_counter()
        prefill_done = prefill_done or now
        context_full = longest + step + 1 > capacity  # no slot left for this token
        for row, token_id in picked.items():
            piece = sequences[row].push(token_id, context_full)
            if piece:
                yield row, piece
            if sequences[row].finish_reason is not None:
                finished.add(row)
                usage = Usage(
                    prompt_tokens=len(prompts[row]),
                    completion_tokens=sequences[row].generated,
                    prompt_seconds=prefill_done - started,
                    generation_seconds=time.perf_counter() - prefill_done,
                    truncated_tokens=truncated[row] if truncated else 0,
                )
                yield row, _completion(sequences[row], usage)


def _completion(sequence: _Sequence, usage: Usage) -> Completion:
    return Completion(
        text="".join(sequence.text),
        finish_reason=sequence.finish_reason or "length",
        usage=usage,
        token_ids=sequence.token_ids,
        stop=sequence.stop,
    )


class Continuation:
    """One sequence continuing from a KV cache, advanced one forward pass per `step()`.

    For a server that interleaves sequences and may drop one between steps. `cache` (batch 1)
    already holds the keys and values of `prompt[:cache.length]`, typically a prefix reused from
    an earlier request, so only the rest of the prompt is computed, at most `prefill_chunk`
    tokens per step. `cached_ids` names what the cache holds at any moment, so the cache of a
    finished or abandoned sequence can be kept for the next request. With
    `stops.max_new_tokens == 0` the prompt is only evaluated into the cache.
    """

    def __init__(
        self,
        model: GemmaForCausalLM,
        tokenizer: Tokenizer,
        cache: KVCache,
        prompt: Sequence[int],
        stops: StopConditions,
        params: SamplingParams,
        *,
        prefill_chunk: int = 256,
    ) -> None:
        if not prompt or cache.batch_size != 1 or prefill_chunk < 1:
            raise ValueError("a continuation needs a non-empty prompt and a one-row cache")
        if cache.length >= len(prompt):
            cache.truncate(len(prompt) - 1)  # the last prompt token must run to give logits
        self.model, self.cache, self.stops, self.params = model, cache, stops, params
        self.reused = cache.length  # prompt tokens whose keys and values were already cached
        self.prompt_tokens = len(prompt)
        self.prefill_chunk = prefill_chunk
        self.completion: Completion | None = None
        self._ids = list(prompt)  # the prompt, then each generated token once it is to be fed
        self._text = _Sequence(tokenizer, stops)
        self._vocab_limit = tokenizer.vocab_size
        self._generators = make_generators(params, 1)
        self._started: float | None = None
        self._prefilled: float | None = None

    @property
    def cached_ids(self) -> list[int]:
        """The token ids whose keys and values the cache holds now."""
        return self._ids[: self.cache.length]

    @property
    def prefilled(self) -> bool:
        """Whether the whole prompt has been evaluated."""
        return self._prefilled is not None

    @property
    def generated(self) -> int:
        """Tokens generated so far, a stop token included."""
        return self._text.generated

    def step(self) -> str:
        """Run one forward pass (a prompt chunk or one new token); return the text it released."""
        if self.completion is not None:
            raise RuntimeError("the continuation is finished")
        self._started = self._started or time.perf_counter()
        device = self.model.model.embed_tokens.weight.device
        pending = self._ids[self.cache.length :]  # (T,) tokens not yet in the cache
        chunk = pending[: self.prefill_chunk]
        logits = self.model(torch.tensor([chunk], device=device), cache=self.cache)
        if len(chunk) < len(pending):
            return ""
        self._prefilled = self._prefilled or time.perf_counter()
        if self.stops.max_new_tokens == 0:
            self._finish()
            return ""
        logits = logits[:, -1].float()  # (1, V)
        logits[:, self._vocab_limit :] = float("-inf")  # padded embedding rows are not tokens
        token = int(pick_tokens(logits, self.params, self._generators)[0])
        context_full = len(self._ids) + 1 > self.cache.capacity  # no slot left to feed it
        piece = self._text.push(token, context_full)
        if self._text.finish_reason is not None:
            self._finish()
        else:
            self._ids.append(token)
        return piece

    def _finish(self) -> None:
        now = time.perf_counter()
        prefilled = self._prefilled or now
        usage = Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self._text.generated,
            prompt_seconds=prefilled - (self._started or now),
            generation_seconds=now - prefilled,
        )
        self.completion = _completion(self._text, usage)
