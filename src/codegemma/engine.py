"""The public engine object: `codegemma.load(...)` returns a `CodeGemma`."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

from codegemma.acceleration import Acceleration, accelerate
from codegemma.chat import CHAT_STOP_TOKENS, chat_prompt
from codegemma.devices import resolve_device, resolve_dtype
from codegemma.errors import InvalidRequestError
from codegemma.fim import FIM_STOP_TOKENS, ContextFile, FimMode, fim_prompt
from codegemma.generation import Completion, StopConditions, stream_batch
from codegemma.loading import load_model_and_tokenizer
from codegemma.model import GemmaForCausalLM
from codegemma.prompt_fitting import check_fits, fit_fim_by_lines, keep_last_tokens
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
) -> CodeGemma:
    """Load a CodeGemma checkpoint: a model directory, a GGUF file or a Hugging Face id.

    `model` None: the small default model shipped inside the package (float32 unless `dtype`
    says otherwise). `adapter`: a LoRA adapter
    directory in PEFT's layout, merged into the weights unless `merge_adapter` is False.

    `dtype`: bfloat16 (default) or float32 for unquantized weights. `quantize`: "int8" or
    "int4" quantizes weights at load (a checkpoint written by `codegemma quantize` loads
    without that cost). `kernels`: "auto" (native C kernels where the CPU supports them),
    "native" or "torch" (plain PyTorch, the reference path). `threads`: default all cores.
    """
    if model is None:
        from codegemma.default_model import default_model_dir

        model = default_model_dir()
        # The default model is tiny and was trained and scored in float32: it keeps that
        # precision unless asked otherwise (bfloat16 would cost it accuracy and gain no speed).
        dtype = dtype or "float32"
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    net, tokenizer, path, notes = load_model_and_tokenizer(model, resolved_dtype, resolved_device)
    if adapter is not None:
        from codegemma.training.lora import apply_adapter

        apply_adapter(net, adapter, merge=merge_adapter)
        how = "merged" if merge_adapter else "separate"
        notes.append(f"LoRA adapter {adapter} applied ({how})")
    if quantize is not None:
        if quantize not in BITS:
            raise InvalidRequestError(f"quantize must be int8 or int4, got {quantize!r}")
        quantize_model(net, quantize)
        notes.append(f"quantized to {quantize} at load")
    acceleration = accelerate(net, resolved_device, kernels, threads)
    return CodeGemma(
        net, tokenizer, name=str(model), path=path, acceleration=acceleration, notes=notes
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
    """A loaded model with its tokenizer: completion (FIM), generation, chat and scoring."""

    def __init__(
        self,
        model: GemmaForCausalLM,
        tokenizer: Tokenizer,
        *,
        name: str = "codegemma",
        path: Path | None = None,
        acceleration: Acceleration | None = None,
        notes: list[str] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.path = path
        self.acceleration = acceleration or Acceleration("torch", torch.get_num_threads())
        self.notes = notes or []  # what loading converted (quantization, GGUF types)

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
        mode: FimMode = "psm",
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        truncate: bool = False,
    ) -> Completion:
        """Fill in the code between `prefix` and `suffix`; returns only the middle text.

        `files` are other files shown first as context ((path, content) pairs), `path` names the
        current file, `mode` is the prompt order ("psm" or "spm"). Generation ends at the
        CodeGemma stop tokens, at any `stop` string, or after `max_new_tokens`. A prompt longer
        than the context is an error unless `truncate` (lines far from the cursor are dropped).
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
        mode: FimMode = "psm",
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        truncate: bool = False,
    ) -> TextStream:
        """Like `complete`, yielding text pieces as they are decided."""
        _require_text(prefix=prefix, suffix=suffix)
        sampling = SamplingParams(temperature, top_k, top_p, seed)
        conditions = self._conditions(FIM_STOP_TOKENS, stop, max_new_tokens)

        def encode(before: str, after: str) -> list[int]:
            text = fim_prompt(before, after, mode=mode, files=files, path=path)
            return self.tokenizer.encode(text)

        if truncate:
            budget = max(1, self.context_length - max_new_tokens)
            ids, dropped = fit_fim_by_lines(prefix, suffix, encode, budget)
        else:
            ids, dropped = encode(prefix, suffix), 0
            check_fits(len(ids), self.context_length)
        return TextStream(self._events([ids], [dropped], conditions, sampling))

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
    ) -> Completion | list[Completion]:
        """Continue `prompt` (BOS is added); a list of prompts runs as one batch, giving a list.

        `stop_tokens` are token texts that end generation (EOS always does); `stop` strings end
        it too and never appear in the text. `truncate` keeps the end of a too-long prompt.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise InvalidRequestError("generate() needs at least one prompt")
        sampling = SamplingParams(temperature, top_k, top_p, seed)
        conditions = self._conditions(stop_tokens, stop, max_new_tokens)
        ids, dropped = self._encode_prompts(prompts, max_new_tokens, truncate)
        results: dict[int, Completion] = {}
        for row, event in self._events(ids, dropped, conditions, sampling):
            if isinstance(event, Completion):
                results[row] = event
        ordered = [results[i] for i in range(len(ids))]
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
    ) -> TextStream:
        """Like `generate` for one prompt, yielding text pieces."""
        sampling = SamplingParams(temperature, top_k, top_p, seed)
        conditions = self._conditions(stop_tokens, stop, max_new_tokens)
        ids, dropped = self._encode_prompts([prompt], max_new_tokens, truncate)
        return TextStream(self._events(ids, dropped, conditions, sampling))

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
    ) -> Completion:
        """The next assistant reply in the Gemma turn format (instruction-tuned models).

        `messages` are {"role": "system" | "user" | "assistant", "content": str} objects.
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
    ) -> TextStream:
        """Like `chat`, yielding text pieces."""
        return self.stream_generate(
            chat_prompt(messages),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
            stop_tokens=CHAT_STOP_TOKENS,
            truncate=truncate,
        )

    # --- scoring -----------------------------------------------------------------------------

    @torch.inference_mode()
    def logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Float32 logits (len(token_ids), vocab) of every position, for scoring."""
        ids = list(token_ids)
        if not ids:
            raise InvalidRequestError("logits() needs at least one token id")
        check_fits(len(ids) - 1, self.context_length)
        if not all(isinstance(t, int) and 0 <= t < self.config.vocab_size for t in ids):
            raise InvalidRequestError(
                f"token ids must be integers in [0, {self.config.vocab_size})"
            )
        tokens = torch.tensor([ids], dtype=torch.long, device=self.device)
        return self.model(tokens, logits_positions=slice(None))[0].float()

    # --- internals -----------------------------------------------------------------------------

    def _conditions(
        self, stop_tokens: Sequence[str], stop: str | Sequence[str] | None, max_new_tokens: int
    ) -> StopConditions:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise InvalidRequestError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
        if max_new_tokens < 1:
            raise InvalidRequestError(f"max_new_tokens must be positive, got {max_new_tokens}")
        return StopConditions(
            max_new_tokens=max_new_tokens,
            stop_ids=self._stop_ids(stop_tokens),
            stop_strings=_stop_strings(stop),
        )

    def _encode_prompts(
        self, prompts: Sequence[str], max_new_tokens: int, truncate: bool
    ) -> tuple[list[list[int]], list[int]]:
        budget = max(1, self.context_length - max_new_tokens)
        encoded, dropped = [], []
        for text in prompts:
            _require_text(prompt=text)
            ids = self.tokenizer.encode(text)
            if truncate:
                ids, lost = keep_last_tokens(ids, budget, self.tokenizer.bos_id)
            else:
                check_fits(len(ids), self.context_length)
                lost = 0
            encoded.append(ids)
            dropped.append(lost)
        return encoded, dropped

    def _events(self, ids, dropped, conditions: StopConditions, sampling: SamplingParams):
        with torch.inference_mode():
            yield from stream_batch(
                self.model,
                self.tokenizer,
                ids,
                conditions,
                sampling,
                context_length=self.context_length,
                truncated=dropped,
            )

    def _stop_ids(self, texts: Sequence[str]) -> frozenset[int]:
        ids = {self.tokenizer.token_id(t) for t in texts}
        ids.add(self.tokenizer.eos_id)
        return frozenset(i for i in ids if i is not None)


def _drain(stream: TextStream) -> Completion:
    for _ in stream:
        pass
    assert stream.completion is not None  # stream_batch always ends each row with a Completion
    return stream.completion


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
