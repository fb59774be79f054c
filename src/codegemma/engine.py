"""The public engine object: `codegemma.load(...)` returns a `CodeGemma`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

from codegemma.acceleration import Acceleration, KernelOptions, accelerate
from codegemma.default_model import default_model_dir
from codegemma.devices import resolve_device, resolve_dtype
from codegemma.errors import InvalidRequestError, PromptTooLongError
from codegemma.fim import ContextFile, FimMode
from codegemma.generation import (
    DEFAULT_SPECULATION,
    PREFILL_CHUNK,
    BatchEngine,
    Completion,
    GenSequence,
    StopConditions,
)
from codegemma.kv_cache import KVCache
from codegemma.loading import load_model_and_tokenizer
from codegemma.lora import apply_adapter
from codegemma.model import GemmaForCausalLM
from codegemma.prompts import Prompt, PromptBuilder
from codegemma.quant.apply import BITS, quantize_model, weight_bits
from codegemma.sampling import SamplingParams
from codegemma.tokenizer import Tokenizer


def load(
    model: str | os.PathLike | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    quantize: str | None = None,
    kernels: str = "auto",
    threads: int | None = None,
    adapter: str | os.PathLike | None = None,
    merge_adapter: bool = True,
    kernel_options: KernelOptions | None = None,
    speculate: int = DEFAULT_SPECULATION,
) -> CodeGemma:
    """Load a CodeGemma checkpoint: a model directory, a GGUF file or a Hugging Face id.

    `model` None: the small default model shipped inside the package (float32 unless `dtype`
    says otherwise). `adapter`: a LoRA adapter
    directory in PEFT's layout, merged into the weights unless `merge_adapter` is False.

    `dtype`: bfloat16 (default) or float32 for unquantized weights. `quantize`: "int8" or
    "int4" quantizes weights at load (a checkpoint written by `codegemma quantize` loads
    without that cost). `kernels`: "auto" (native C kernels where the CPU supports them),
    "native" or "torch" (plain PyTorch, the reference path). `threads`: default all cores;
    the engine sets PyTorch's thread count around its own work and restores it (loading leaves
    the process as it was). `kernel_options`: switches of the native kernels (KernelOptions).
    `speculate`: the most tokens drafted from the text itself and checked per step (0: off),
    when a call does not say; the output is the same either way.
    """
    if model is None:
        model = default_model_dir()
        # The default model is tiny and was trained and scored in float32: it keeps that
        # precision unless asked otherwise (bfloat16 would cost it accuracy and gain no speed).
        dtype = dtype or "float32"
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    net, tokenizer, path, notes = load_model_and_tokenizer(model, resolved_dtype, resolved_device)
    if adapter is not None:
        apply_adapter(net, adapter, merge=merge_adapter)
        how = "merged" if merge_adapter else "separate"
        notes.append(f"LoRA adapter {adapter} applied ({how})")
    if quantize is not None:
        if quantize not in BITS:
            raise InvalidRequestError(f"quantize must be int8 or int4, got {quantize!r}")
        quantize_model(net, quantize)
        notes.append(f"quantized to {quantize} at load")
    acceleration = accelerate(net, resolved_device, kernels, threads, kernel_options)
    return CodeGemma(
        net,
        tokenizer,
        name=str(model),
        path=path,
        acceleration=acceleration,
        notes=notes,
        speculate=speculate,
    )


class TextStream:
    """Text pieces of one generation as they are decided; `.completion` is set at the end."""

    def __init__(self, events: Iterator[tuple[int, str | Completion]]) -> None:
        self._events = events
        self.completion: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        for _, event in self._events:
            if isinstance(event, Completion):
                self.completion = event
            else:
                yield event


class CodeGemma:
    """A loaded model with its tokenizer: completion (FIM), generation, chat and scoring.

    Everything runs on one `BatchEngine` step loop: the methods here build prompts
    (`prompts`), turn them into sequences (`sequence`) and step a batch (`batch`) to the end;
    the server keeps one batch running and adds and removes sequences as requests come and go.
    """

    def __init__(
        self,
        model: GemmaForCausalLM,
        tokenizer: Tokenizer,
        *,
        name: str = "codegemma",
        path: Path | None = None,
        acceleration: Acceleration | None = None,
        notes: list[str] | None = None,
        speculate: int = DEFAULT_SPECULATION,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.path = path
        self.acceleration = acceleration or Acceleration("torch", torch.get_num_threads())
        self.notes = notes or []  # what loading converted (quantization, GGUF types)
        # Drafted tokens checked per step, at most, when a call does not say (speculation.py).
        # On by default: checking 1-2 drafted tokens costs 1.1-1.3x a CodeGemma-2B step, drafts
        # are offered only where the text repeats itself, their length adapts to how many are
        # kept, and the output is the same either way (re-typing near-copies on the default
        # model: 89% of drafts kept, decode 2.3x faster; BENCHMARKS.md).
        self.default_speculation = _checked(speculate)
        self._prompts = PromptBuilder(tokenizer, self.context_length)

    @property
    def prompts(self) -> PromptBuilder:
        """The one prompt builder (FIM, plain and chat prompts fitted to the context)."""
        if self._prompts.context_length != self.context_length:  # the config was replaced
            self._prompts = PromptBuilder(self.tokenizer, self.context_length)
        return self._prompts

    @property
    def weights(self) -> str:
        """The weight format: 'bfloat16', 'float32', 'int8', 'int4' or 'mixed'."""
        return weight_bits(self.model)

    def close(self) -> None:
        """Stop the kernel threads (the engine is unusable afterwards)."""
        self.acceleration.close()

    @property
    def config(self):
        return self.model.config

    @property
    def context_length(self) -> int:
        return self.model.config.max_position_embeddings

    @property
    def device(self) -> torch.device:
        weight = self.model.model.embed_tokens.weight
        return weight.device

    # --- completion (fill-in-the-middle) -------------------------------------------------

    def complete(
        self,
        prefix: str,
        suffix: str = "",
        *,
        files: Sequence[ContextFile | tuple[str, str]] | None = None,
        path: str | None = None,
        mode: FimMode | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        truncate: bool = False,
        speculate: int | None = None,
    ) -> Completion:
        """Fill in the code between `prefix` and `suffix`; returns only the middle text.

        `files` are other files shown first as context ((path, content) pairs), `path` names the
        current file, `mode` is the prompt order ("spm", the default, or "psm"). Generation ends
        at the CodeGemma stop tokens, at any `stop` string, or after `max_new_tokens`. A prompt
        longer than the context is an error unless `truncate` (lines far from the cursor and
        the farthest context files are dropped, leaving room for `max_new_tokens`).
        """
        options = dict(locals())
        del options["self"]
        return _drain(self.stream_complete(**options))

    def stream_complete(
        self,
        prefix: str,
        suffix: str = "",
        *,
        files: Sequence[ContextFile | tuple[str, str]] | None = None,
        path: str | None = None,
        mode: FimMode | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        truncate: bool = False,
        speculate: int | None = None,
    ) -> TextStream:
        """Like `complete`, yielding text pieces as they are decided."""
        _require_text(prefix=prefix, suffix=suffix)
        sampling = SamplingParams(temperature, top_k, top_p, seed)
        _check_max_new_tokens(max_new_tokens)
        prompt = self._fitting(
            lambda: self.prompts.fim(
                prefix,
                suffix,
                files=files or (),
                path=path,
                mode=mode,
                reserve=max_new_tokens if truncate else 1,
                truncate=truncate,
            )
        )
        sequence = self.sequence(
            prompt, max_new_tokens=max_new_tokens, sampling=sampling, stop=stop, speculate=speculate
        )
        return TextStream(self._events([sequence]))

    # --- plain generation ------------------------------------------------------------------

    def generate(
        self,
        prompt: str | Sequence[str],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_tokens: Sequence[str] = ("<eos>",),
        truncate: bool = False,
        speculate: int | None = None,
    ) -> Completion | list[Completion]:
        """Continue `prompt` (BOS is added); a list of prompts runs as one batch, giving a list.

        `stop_tokens` are token texts that end generation (EOS always does); `stop` strings end
        it too and never appear in the text. `truncate` keeps the end of a too-long prompt.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise InvalidRequestError("generate() needs at least one prompt")
        sampling = SamplingParams(temperature, top_k, top_p, seed)
        sequences = [
            self.sequence(
                self._text_prompt(text, max_new_tokens, truncate, stop_tokens),
                max_new_tokens=max_new_tokens,
                sampling=sampling,
                stop=stop,
                speculate=speculate,
            )
            for text in prompts
        ]
        for _ in self._events(sequences):
            pass
        ordered = [s.completion for s in sequences]
        return ordered[0] if isinstance(prompt, str) else ordered

    def stream_generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_tokens: Sequence[str] = ("<eos>",),
        truncate: bool = False,
        speculate: int | None = None,
    ) -> TextStream:
        """Like `generate` for one prompt, yielding text pieces."""
        sampling = SamplingParams(temperature, top_k, top_p, seed)
        text = self._text_prompt(prompt, max_new_tokens, truncate, stop_tokens)
        sequence = self.sequence(
            text, max_new_tokens=max_new_tokens, sampling=sampling, stop=stop, speculate=speculate
        )
        return TextStream(self._events([sequence]))

    # --- chat --------------------------------------------------------------------------------

    def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        truncate: bool = False,
        speculate: int | None = None,
    ) -> Completion:
        """The next assistant reply in the Gemma turn format (instruction-tuned models).

        `messages` are {"role": "system" | "user" | "assistant", "content": str} objects.
        `truncate` drops the oldest exchanges of a conversation too long for the context.
        """
        options = dict(locals())
        del options["self"]
        return _drain(self.stream_chat(**options))

    def stream_chat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        truncate: bool = False,
        speculate: int | None = None,
    ) -> TextStream:
        """Like `chat`, yielding text pieces."""
        sampling = SamplingParams(temperature, top_k, top_p, seed)
        _check_max_new_tokens(max_new_tokens)
        reserve = max_new_tokens if truncate else 1
        prompt = self._fitting(
            lambda: self.prompts.chat(messages, reserve=reserve, truncate=truncate)
        )
        sequence = self.sequence(
            prompt, max_new_tokens=max_new_tokens, sampling=sampling, stop=stop, speculate=speculate
        )
        return TextStream(self._events([sequence]))

    # --- scoring -----------------------------------------------------------------------------

    @torch.inference_mode()
    def logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Float32 logits (len(token_ids), vocab) of every position, for scoring."""
        ids = list(token_ids)
        if not ids:
            raise InvalidRequestError("logits() needs at least one token id")
        if len(ids) > self.context_length:
            raise PromptTooLongError(
                f"{len(ids)} tokens do not fit in the context window of {self.context_length}"
            )
        if not all(isinstance(t, int) and 0 <= t < self.config.vocab_size for t in ids):
            raise InvalidRequestError(
                f"token ids must be integers in [0, {self.config.vocab_size})"
            )
        tokens = torch.tensor([ids], dtype=torch.long, device=self.device)
        with self.acceleration.prompt_threads():
            return self.model(tokens, logits_positions=slice(None))[0].float()

    @torch.inference_mode()
    def embed(
        self, inputs: Sequence[str | Sequence[int]], *, truncate: bool = False
    ) -> torch.Tensor:
        """Embeddings (N, D) float32 of N texts (BOS added) or token id lists: the final hidden
        state after the final norm, mean-pooled over every token (BOS included), L2-normalized.
        An input longer than the context is an error unless `truncate` (its end is dropped)."""
        if isinstance(inputs, str) or not inputs:
            raise InvalidRequestError("embed() needs a list of at least one input")
        rows = []
        for item in inputs:
            ids = self.tokenizer.encode(item) if isinstance(item, str) else list(item)
            if len(ids) > self.context_length and truncate:
                ids = ids[: self.context_length]
            if not ids or len(ids) > self.context_length:
                raise PromptTooLongError(
                    f"an input of {len(ids)} tokens does not fit in the context window of "
                    f"{self.context_length} (and needs at least one token)"
                )
            if not all(isinstance(t, int) and 0 <= t < self.config.vocab_size for t in ids):
                raise InvalidRequestError(
                    f"token ids must be integers in [0, {self.config.vocab_size})"
                )
            tokens = torch.tensor([ids], dtype=torch.long, device=self.device)
            with self.acceleration.prompt_threads():
                hidden = self.model.hidden_states(tokens)[0].float()  # (T, D)
            rows.append(torch.nn.functional.normalize(hidden.mean(0), dim=0))
        return torch.stack(rows)

    # --- the step engine, for servers and batch runners ----------------------------------------

    def sequence(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int | None = None,
        sampling: SamplingParams | None = None,
        stop: str | Sequence[str] | None = None,
        ignore_eos: bool = False,
        cache: KVCache | None = None,
        logprobs: int = 0,
        speculate: int | None = None,
    ) -> GenSequence:
        """A sequence for `batch()`: generate after `prompt` until one of its stop tokens (all
        ignored with `ignore_eos`), a `stop` string, `max_new_tokens` (None: the end of the
        context; 0: only compute the prompt into the cache) or the end of the context.
        `cache` may hold a prefix of the prompt already (see `new_cache`); `logprobs`: record
        that many alternatives for every generated token; `speculate`: check up to that many
        tokens drafted from the text itself with each step (0: off; None: the engine's
        default, `default_speculation`) — the output is the same either way."""
        room = self.context_length - len(prompt.ids)
        if room < 1:
            raise PromptTooLongError(_too_long(len(prompt.ids), self.context_length))
        limit = room if max_new_tokens is None else min(max_new_tokens, room)
        conditions = StopConditions(
            max_new_tokens=limit,
            stop_ids=frozenset() if ignore_eos else self._stop_ids(prompt.stop_tokens),
            stop_strings=_stop_strings(stop),
        )
        needed = len(prompt.ids) + limit
        if cache is None or cache.capacity < needed:
            cache = self.new_cache(needed, reuse=cache)
        return GenSequence(
            prompt.ids,
            cache,
            conditions,
            sampling or SamplingParams(),
            self.tokenizer,
            truncated_tokens=prompt.truncated_tokens,
            logprobs=logprobs,
            speculate=self.default_speculation if speculate is None else _checked(speculate),
        )

    def new_cache(self, capacity: int, reuse: KVCache | None = None) -> KVCache:
        """An empty KV cache of `capacity` slots (at most the context), holding the contents of
        `reuse` (a smaller cache) if given."""
        config = self.config
        cache = KVCache(
            config.num_hidden_layers,
            config.num_key_value_heads,
            min(capacity, self.context_length),
            config.head_dim,
            dtype=self.model.activation_dtype,
            device=self.device,
        )
        if reuse is not None:
            cache.copy_prefix(reuse, reuse.length)
        return cache

    def batch(self, *, prefill_chunk: int = PREFILL_CHUNK, interleave: bool = True) -> BatchEngine:
        """A step engine on this model (see BatchEngine): `add` sequences, call `step`."""
        acceleration = self.acceleration
        return BatchEngine(
            self.model,
            decode_step=acceleration.decode_step,
            decode_threads=acceleration.decode_threads,
            prompt_threads=acceleration.prompt_threads,
            prefill_chunk=prefill_chunk,
            interleave=interleave,
        )

    # --- internals -----------------------------------------------------------------------------

    def _text_prompt(
        self, text: str, max_new_tokens: int, truncate: bool, stop_tokens: Sequence[str]
    ) -> Prompt:
        _require_text(prompt=text)
        _check_max_new_tokens(max_new_tokens)
        reserve = max_new_tokens if truncate else 1
        prompt = self._fitting(lambda: self.prompts.text(text, reserve=reserve, truncate=truncate))
        return dataclasses.replace(prompt, stop_tokens=tuple(stop_tokens))

    @staticmethod
    def _fitting(build) -> Prompt:
        """A prompt built by `build`, with its value errors as InvalidRequestError."""
        try:
            return build()
        except ValueError as exc:
            if isinstance(exc, InvalidRequestError):
                raise
            raise InvalidRequestError(str(exc)) from exc

    def _events(self, sequences: list[GenSequence]) -> Iterator[tuple[int, str | Completion]]:
        """(index, text piece) as text is decided and (index, Completion) at each end."""
        engine = self.batch(interleave=False)
        index = {id(s): i for i, s in enumerate(sequences)}
        for sequence in sequences:
            engine.add(sequence)
        with torch.inference_mode():
            for sequence, piece in engine.run():
                row = index[id(sequence)]
                if piece:
                    yield row, piece
                if sequence.completion is not None:
                    yield row, sequence.completion

    def _stop_ids(self, texts: Sequence[str]) -> frozenset[int]:
        ids = {self.tokenizer.token_id(t) for t in texts}
        ids.add(self.tokenizer.eos_id)
        return frozenset(i for i in ids if i is not None)


def _checked(speculate: object) -> int:
    if isinstance(speculate, bool) or not isinstance(speculate, int) or not 0 <= speculate <= 16:
        raise InvalidRequestError(f"speculate must be an integer in [0, 16], got {speculate!r}")
    return speculate


def _drain(stream: TextStream) -> Completion:
    for _ in stream:
        pass
    assert stream.completion is not None  # every sequence ends with a Completion
    return stream.completion


def _check_max_new_tokens(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"max_new_tokens must be an integer, got {value!r}")
    if value < 1:
        raise InvalidRequestError(f"max_new_tokens must be positive, got {value}")


def _too_long(tokens: int, context: int) -> str:
    return (
        f"the prompt is {tokens} tokens but the context window holds {context} (the prompt "
        "plus at least one new token); shorten it or ask for truncation"
    )


def _require_text(**values: object) -> None:
    for name, value in values.items():
        if not isinstance(value, str):
            raise InvalidRequestError(f"{name} must be a string, got {type(value).__name__}")


def _stop_strings(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if not all(isinstance(s, str) for s in stop):
        raise InvalidRequestError("stop must be a string or a list of strings")
    return tuple(stop)
