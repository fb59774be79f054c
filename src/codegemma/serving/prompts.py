"""Token ids for a `GenerationRequest`: the FIM, chat or raw prompt, fitted to the context."""

from __future__ import annotations

import dataclasses

from codegemma.chat import CHAT_STOP_TOKENS, chat_prompt
from codegemma.errors import CodeGemmaError
from codegemma.fim import FIM_STOP_TOKENS, fim_prompt
from codegemma.prompt_fitting import check_fits
from codegemma.serving.requests import (
    ChatInput,
    FimInput,
    FimMode,
    GenerationRequest,
    RequestError,
    TextInput,
)
from codegemma.serving.truncation import fit_fim_stably, stable_prefix_start
from codegemma.tokenizer import Tokenizer

# Room kept for new tokens when a FIM prompt is fitted to the context without a token limit.
_DEFAULT_RESERVE = 256


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A request's prompt as the model will see it."""

    ids: list[int]
    stop_tokens: tuple[str, ...]  # token texts that end generation
    truncated_tokens: int = 0  # prompt tokens left out to fit, or to start at a stable line


class PromptBuilder:
    """Builds prompts with the server's defaults for FIM order and stable prefix starts."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        context_length: int,
        *,
        fim_mode: FimMode = "spm",
        stable_prefix: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.fim_mode = fim_mode
        self.stable_prefix = stable_prefix

    def build(self, request: GenerationRequest) -> Prompt:
        """The prompt of `request`; a prompt that cannot fit is a RequestError."""
        source = request.input
        try:
            if isinstance(source, FimInput):
                return self._fim(source, request)
            if isinstance(source, ChatInput):
                ids = self.tokenizer.encode(chat_prompt(list(source.messages)))
                stops = CHAT_STOP_TOKENS
            elif isinstance(source, TextInput):
                ids = self.tokenizer.encode(source.text)
                stops = FIM_STOP_TOKENS  # raw prompts are often hand-made FIM prompts
            else:
                raise TypeError(f"unknown request input {type(source).__name__}")
            check_fits(len(ids), self.context_length)
        except CodeGemmaError as exc:
            raise RequestError(str(exc), param="prompt") from exc
        return Prompt(ids, stops)

    def _fim(self, source: FimInput, request: GenerationRequest) -> Prompt:
        mode = source.mode or self.fim_mode

        def encode(prefix: str, suffix: str) -> list[int]:
            text = fim_prompt(prefix, suffix, mode=mode, files=source.files, path=source.path)
            return self.tokenizer.encode(text)

        prefix, dropped = source.prefix, 0
        stable = self.stable_prefix if request.stable_prefix is None else request.stable_prefix
        if stable and request.cache_prompt:
            cut = stable_prefix_start(prefix)
            if cut:
                dropped = len(self.tokenizer.encode(prefix[:cut], add_bos=False))
                prefix = prefix[cut:]
        reserve = request.max_tokens if request.max_tokens is not None else _DEFAULT_RESERVE
        budget = max(1, self.context_length - max(1, min(reserve, self.context_length // 2)))
        ids, cut_to_fit = fit_fim_stably(prefix, source.suffix, encode, budget)
        return Prompt(ids, FIM_STOP_TOKENS, dropped + cut_to_fit)
