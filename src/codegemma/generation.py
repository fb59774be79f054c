"""The one generation engine: sequences in a batch, advanced one step at a time.

A `GenSequence` is one prompt being generated: its token ids, its own KV cache, its sampling
state and its stops. A `BatchEngine` holds the running sequences; each `step()` runs one
forward pass over every sequence that needs exactly one token computed (decoding sequences,
and prompts with one token left), then prompt chunks of the sequences still prefilling, about
`prefill_chunk` tokens in all, and returns the text each sequence released. Sequences join
(`add`) and leave (`remove`, or by finishing) between steps. The API (`CodeGemma.generate`,
`complete`, `chat` and their streams), evaluation and the server all run on it.

Every sequence is computed exactly as it would be alone: the decode pass reads each row
through row-invariant kernels and attends over the row's own cache, and a prompt is cut into
chunks that depend only on its own length and on how much of it was cached, never on the
other sequences.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Sequence

import torch

from codegemma.detokenizer import StreamingDetokenizer
from codegemma.kv_cache import KVCache
from codegemma.model import GemmaForCausalLM
from codegemma.quant.backends import DECODE_ROWS
from codegemma.sampling import SamplingParams, next_token_probs
from codegemma.speculation import NgramDrafter, accept_or_replace
from codegemma.stop_strings import StopStringFilter
from codegemma.tokenizer import Tokenizer

PREFILL_CHUNK = 256  # prompt tokens per forward pass (activation memory stays bounded)
DEFAULT_SPECULATION = 8  # the most tokens drafted from the text itself per step (speculation.py)


@dataclasses.dataclass
class Usage:
    """Token counts and wall-clock seconds of one generation."""

    prompt_tokens: int  # tokens fed to the model, BOS included
    completion_tokens: int  # tokens generated, the stop token included
    prompt_seconds: float  # from joining the engine to the first new token
    generation_seconds: float  # from the first new token to the end
    truncated_tokens: int = 0  # prompt tokens dropped to fit the context (when asked to)
    cached_tokens: int = 0  # prompt tokens whose keys and values came from a cache

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.generation_seconds if self.generation_seconds else 0.0


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and the most likely alternatives at its step."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token id, log-probability), most likely first


@dataclasses.dataclass
class Completion:
    """The result of one prompt: text without any stop token or stop string."""

    text: str
    finish_reason: str  # "stop" (stop token or string), "length" or "cancelled"
    usage: Usage
    token_ids: list[int]  # generated ids, the stop token excluded
    stop: str | None = None  # the stop token text or stop string that ended generation
    logprobs: list[TokenLogprob] | None = None  # one per generated token, when asked


@dataclasses.dataclass(frozen=True)
class StopConditions:
    """When one sequence is over."""

    max_new_tokens: int  # 0: evaluate the prompt into the cache only
    stop_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()


class _Text:
    """Text-level state of one sequence: detokenizing, stop tokens and strings, limits."""

    def __init__(self, tokenizer: Tokenizer, stops: StopConditions) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.detokenizer = StreamingDetokenizer(tokenizer)
        self.filter = StopStringFilter(stops.stop_strings)
        self.token_ids: list[int] = []
        self.generated = 0
        self.pieces: list[str] = []
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
        self.pieces.append(piece)
        return piece


class GenSequence:
    """One prompt being generated, with its own KV cache.

    `cache` may already hold the keys and values of a prefix of `prompt` (reused from an
    earlier request): only the rest is computed. `cached_ids` names what the cache holds at
    any moment, so the cache of a finished or abandoned sequence can be kept for the next
    request that shares it. `logprobs` > 0 records each generated token's log-probability and
    that many alternatives.
    """

    def __init__(
        self,
        prompt: Sequence[int],
        cache: KVCache,
        stops: StopConditions,
        params: SamplingParams,
        tokenizer: Tokenizer,
        *,
        truncated_tokens: int = 0,
        logprobs: int = 0,
        speculate: int = 0,
    ) -> None:
        if not prompt:
            raise ValueError("a sequence needs a non-empty prompt")
        if cache.capacity < len(prompt):
            raise ValueError(f"a cache of {cache.capacity} slots for {len(prompt)} prompt tokens")
        if cache.length >= len(prompt):
            cache.truncate(len(prompt) - 1)  # the last prompt token must run to give logits
        self.cache = cache
        self.params = params
        self.prompt_tokens = len(prompt)
        self.reused = cache.length  # prompt tokens whose keys and values were already cached
        self.truncated_tokens = truncated_tokens
        self.logprobs = logprobs
        self.speculate = speculate  # tokens drafted from the text itself per step, at most
        # Checking k drafted tokens costs 1.1-1.2x a step for k = 1 and 1.3x for k = 2, but
        # 2.7-3.8x for k = 8 (BENCHMARKS.md): drafts start at 2 tokens, double while all are
        # kept, and fall back to what was kept, plus one, after a miss.
        self._draft_length = min(2, speculate)
        self.drafted = 0  # drafted tokens checked so far
        self.accepted = 0  # of those, kept
        self.completion: Completion | None = None
        self._ids = list(prompt)  # the prompt, then each generated token once it is to be fed
        self._text = _Text(tokenizer, stops)
        self._vocab_limit = tokenizer.vocab_size
        self._generator = _generator(params)
        self._chunk_base = cache.length  # prompt chunks are cut from here, whatever the batch
        self._logprobs: list[TokenLogprob] = []
        self._drafter: NgramDrafter | None = None
        self._started: float | None = None
        self._first_token: float | None = None

    @property
    def cached_ids(self) -> list[int]:
        """The token ids whose keys and values the cache holds now."""
        return self._ids[: self.cache.length]

    @property
    def pending(self) -> list[int]:
        """Tokens to compute before the next one can be picked."""
        return self._ids[self.cache.length :]

    @property
    def generated(self) -> int:
        """Tokens generated so far, a stop token included."""
        return self._text.generated

    @property
    def finished(self) -> bool:
        return self.completion is not None

    @property
    def first_token_time(self) -> float | None:
        """When the prompt was done (perf_counter), or None while it is being computed."""
        return self._first_token

    def next_chunk(self, size: int) -> list[int]:
        """The next prompt chunk: chunks of `size` counted from where computing began, so the
        cut never depends on the batch the sequence is in."""
        done = self.cache.length - self._chunk_base
        return self.pending[: size - done % size]

    def cancel(self) -> None:
        """End now, with finish reason "cancelled" (what was released stays released)."""
        if self.completion is None:
            self._text.finish_reason = "cancelled"
            self._finish()

    def draft(self) -> list[int]:
        """Tokens that may follow the pending one, drafted from the text so far (see
        speculation.py): at most `speculate`, within the token limit and the cache."""
        if not self.speculate or len(self.pending) != 1:
            return []
        room = min(
            self._draft_length,
            self._text.stops.max_new_tokens - self._text.generated - 1,
            self.cache.capacity - self.cache.length - 1,
        )
        if room < 1:
            return []
        if self._drafter is None:
            self._drafter = NgramDrafter(self._ids)
        return self._drafter.draft(room)

    def checked(self, offered: int, kept: int) -> None:
        """`kept` of the `offered` drafted tokens were right: set the next draft's length."""
        if offered:
            grown = min(self.speculate, 2 * self._draft_length)
            self._draft_length = grown if kept == offered else max(1, kept + 1)

    def take(self, logits: torch.Tensor, drafted: int | None = None) -> tuple[str, bool]:
        """Pick the next token from this sequence's logits (V,) float32; return the text it
        releases (the sequence may finish) and whether the token is `drafted`, the token the
        text itself suggested (sampling keeps the distribution exact, see
        speculation.accept_or_replace)."""
        self._first_token = self._first_token or time.perf_counter()
        if self._text.stops.max_new_tokens == 0:
            self._finish()
            return "", False
        logits[self._vocab_limit :] = float("-inf")  # padded embedding rows are not tokens
        token, kept = self._pick(logits, drafted)
        if drafted is not None:
            self.drafted += 1
            self.accepted += kept
        if self.logprobs:
            self._logprobs.append(_token_logprob(logits, token, self.logprobs))
        context_full = len(self._ids) + 1 > self.cache.capacity  # no slot left to feed it
        piece = self._text.push(token, context_full)
        if self._text.finish_reason is not None:
            self._finish()
        else:
            self._ids.append(token)
            if self._drafter is not None:
                self._drafter.append(token)
        return piece, kept

    def _pick(self, logits: torch.Tensor, drafted: int | None) -> tuple[int, bool]:
        if self.params.greedy:
            token = int(logits.argmax())
            return token, token == drafted
        probs = next_token_probs(logits[None], self.params)[0]
        if drafted is not None:
            return accept_or_replace(probs, drafted, self._generator)
        return int(torch.multinomial(probs, 1, generator=self._generator)), False

    def _start(self) -> None:
        self._started = self._started or time.perf_counter()

    def _finish(self) -> None:
        now = time.perf_counter()
        started = self._started or now
        first = self._first_token or now
        usage = Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self._text.generated,
            prompt_seconds=first - started,
            generation_seconds=now - first,
            truncated_tokens=self.truncated_tokens,
            cached_tokens=self.reused,
        )
        text = self._text
        self.completion = Completion(
            text="".join(text.pieces),
            finish_reason=text.finish_reason or "length",
            usage=usage,
            token_ids=text.token_ids,
            stop=text.stop,
            logprobs=self._logprobs if self.logprobs else None,
        )


def _generator(params: SamplingParams) -> torch.Generator | None:
    """The sequence's own generator: seeded, a sequence samples the same alone or batched."""
    if params.greedy or params.seed is None:
        return None
    return torch.Generator().manual_seed(params.seed)


def _token_logprob(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """The model's log-probabilities (before sampling settings) of `token` and the `top`
    most likely tokens."""
    logs = torch.log_softmax(logits, dim=-1)  # (V,)
    values, ids = torch.topk(logs, min(top, logs.shape[0]))
    pairs = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token, float(logs[token]), pairs)


class BatchEngine:
    """Runs the forward passes of the sequences it holds, one step at a time.

    `decode_step`: the native whole-stack decode step (None: every pass through the model's
    layers). `decode_threads` and `prompt_threads`: context managers that set PyTorch's thread
    count for a step (its decode pass and the tokens picked) and for a prompt chunk within it,
    and restore it. `interleave`: decode
    while other sequences still prefill (a server, where new requests arrive all the time);
    False computes every prompt first (a batch given at once, where decoding in between would
    read the weights for few rows).
    """

    def __init__(
        self,
        model: GemmaForCausalLM,
        *,
        decode_step=None,
        decode_threads=None,
        prompt_threads=None,
        prefill_chunk: int = PREFILL_CHUNK,
        interleave: bool = True,
    ) -> None:
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be positive, got {prefill_chunk}")
        self.model = model
        self.decode_step = decode_step
        self.decode_threads = decode_threads or contextlib.nullcontext
        self.prompt_threads = prompt_threads or contextlib.nullcontext
        self.prefill_chunk = prefill_chunk
        self.interleave = interleave
        self.sequences: list[GenSequence] = []
        self.forward_passes = 0  # every model forward pass, for tests and reports

    def add(self, sequence: GenSequence) -> None:
        """Join the batch from the next step on."""
        sequence._start()
        self.sequences.append(sequence)

    def remove(self, sequence: GenSequence) -> None:
        """Leave the batch (cancelled sequences; finished ones leave by themselves)."""
        if sequence in self.sequences:
            self.sequences.remove(sequence)

    def step(self) -> list[tuple[GenSequence, str]]:
        """One step: a forward pass over every sequence with a few tokens to compute (decoding
        sequences, and prompts with at most `DECODE_ROWS` tokens left: a keystroke's new
        tokens), then chunks of longer prompts. Returns (sequence, text released) for each
        sequence that picked a token; finished sequences (`.completion` set) have left the
        batch."""
        with self.decode_threads():  # and prompt chunks under prompt_threads, within
            return self._step()

    def _step(self) -> list[tuple[GenSequence, str]]:
        ready = [s for s in self.sequences if len(s.pending) <= DECODE_ROWS]
        prefilling = [s for s in self.sequences if len(s.pending) > DECODE_ROWS]
        events: list[tuple[GenSequence, str]] = []
        if ready and (self.interleave or not prefilling):
            events += self._decode(ready)
        spent = 0
        for sequence in prefilling:
            chunk = sequence.next_chunk(self.prefill_chunk)
            if spent and spent + len(chunk) > self.prefill_chunk:
                break
            spent += len(chunk)
            logits = self._prefill(sequence, chunk)
            if logits is not None:
                events.append((sequence, sequence.take(logits)[0]))
        self.sequences = [s for s in self.sequences if not s.finished]
        return events

    def run(self) -> Iterator[tuple[GenSequence, str]]:
        """Step until every sequence has finished, yielding what each step releases."""
        while self.sequences:
            yield from self.step()

    def _decode(self, sequences: list[GenSequence]) -> list[tuple[GenSequence, str]]:
        """One forward pass over each sequence's pending tokens (one while decoding, a few at
        the end of a prompt) and the tokens drafted after a single pending one; each sequence
        keeps the drafted tokens it would have produced itself, then one more, and its cache
        drops the keys and values of the rest."""
        rows = []
        for s in sequences:
            pending = s.pending
            drafted = s.draft() if len(pending) == 1 else []
            rows.append((s.cache, [*pending, *drafted], len(pending) - 1))
        logits = self._rows(rows)  # (logits wanted, V)
        events, at = [], 0
        for sequence, (cache, tokens, last) in zip(sequences, rows, strict=True):
            drafted = tokens[last + 1 :]
            start, pieces, matched = cache.length, [], 0
            for j in range(len(drafted) + 1):
                piece, kept = sequence.take(
                    logits[at + j], drafted[j] if j < len(drafted) else None
                )
                pieces.append(piece)
                matched += kept
                if not kept or sequence.finished:
                    break
            cache.length = start + last + 1 + j  # the pending tokens and the drafts kept
            sequence.checked(len(drafted), matched)
            at += len(drafted) + 1
            events.append((sequence, "".join(pieces)))
        return events

    def decode(self, caches: Sequence[KVCache], tokens: Sequence[int]) -> torch.Tensor:
        """One forward pass, token b after what caches[b] holds -> float32 logits (B, V):
        through the native whole-stack step where it serves, else the model's layers."""
        with self.decode_threads():
            return self._decode_pass(caches, tokens)

    def _decode_pass(self, caches: Sequence[KVCache], tokens: Sequence[int]) -> torch.Tensor:
        if len(caches) != len(tokens):
            raise ValueError(f"{len(tokens)} new tokens for {len(caches)} caches")
        rows = [(cache, [token], 0) for cache, token in zip(caches, tokens, strict=True)]
        logits = self._rows(rows)
        for cache in caches:
            cache.length += 1
        return logits

    def _rows(self, rows: list[tuple[KVCache, list[int], int]]) -> torch.Tensor:
        """One forward pass over (cache, tokens, first) rows: the tokens of a row follow what
        its cache holds, their keys and values written there -> float32 logits (V,) of each
        row's tokens from index `first` on, rows after rows. Cache lengths are left as they
        were (the caller sets them)."""
        self.forward_passes += 1
        model, step = self.model, self.decode_step
        caches = [cache for cache, tokens, _ in rows for _ in tokens]
        if step is None or not step.serves(model, caches):
            return self._rows_by_layers(rows)
        device = model.model.embed_tokens.weight.device
        slots = [cache.length + j for cache, tokens, _ in rows for j in range(len(tokens))]
        ids = torch.tensor([[t] for _, tokens, _ in rows for t in tokens], device=device)
        cos, sin = model.rope(torch.tensor(slots, device=device)[:, None])  # (M, 1, 1, hd)
        x = step.run(model, model.embed(ids)[:, 0], (cos[:, 0, 0], sin[:, 0, 0]), caches, slots)
        wanted, at = [], 0
        for _, tokens, first in rows:
            wanted += range(at + first, at + len(tokens))
            at += len(tokens)
        return model.head(x[wanted][:, None])[:, -1].float()  # the head only where needed

    def _rows_by_layers(self, rows: list[tuple[KVCache, list[int], int]]) -> torch.Tensor:
        """`_rows` through the model's layers: one forward per group of rows with as many
        tokens and logits from the same index (rows of one shape share the pass)."""
        model = self.model
        device = model.model.embed_tokens.weight.device
        out: list[torch.Tensor | None] = [None] * len(rows)
        for width, first in sorted({(len(tokens), first) for _, tokens, first in rows}):
            group = [i for i, (_, t, f) in enumerate(rows) if (len(t), f) == (width, first)]
            caches = [rows[i][0] for i in group]
            lengths = [cache.length for cache in caches]
            ids = torch.tensor([rows[i][1] for i in group], device=device)  # (B, T)
            with self.prompt_threads() if width > 1 else contextlib.nullcontext():
                logits = model(ids, caches=caches, logits_positions=slice(first, None))
            for i, cache, length, row in zip(group, caches, lengths, logits.float(), strict=True):
                cache.length = length
                out[i] = row
        return torch.cat(out)

    def _prefill(self, sequence: GenSequence, chunk: list[int]) -> torch.Tensor | None:
        """A prompt chunk into the sequence's cache; the last chunk's logits (V,) float32."""
        last = len(chunk) == len(sequence.pending)
        device = self.model.model.embed_tokens.weight.device
        ids = torch.tensor([chunk], device=device)  # (1, T)
        self.forward_passes += 1
        with self.prompt_threads():
            logits = self.model(
                ids, caches=[sequence.cache], logits_positions=None if last else slice(0, 0)
            )
        return logits[0, -1].float() if last else None
