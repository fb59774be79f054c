"""A `GenerationRequest`'s prompt, built by the engine's one prompt builder with the server's
defaults (FIM order, stable prefix starts), its failures as `RequestError`s."""

from __future__ import annotations

import dataclasses

from codegemma.engine import CodeGemma
from codegemma.errors import CodeGemmaError
from codegemma.fim import FimMode
from codegemma.prompts import Prompt
from codegemma.serving.repo import RepoSource
from codegemma.serving.requests import ChatInput, FimInput, GenerationRequest, RequestError


def build_prompt(
    lm: CodeGemma,
    request: GenerationRequest,
    *,
    fim_mode: FimMode | None,
    stable_prefix: bool,
    repo: RepoSource | None = None,
) -> Prompt:
    """The prompt of `request`: FIM prompts are always fitted (editors send more context than
    fits and expect what fits to be used); plain and chat prompts are truncated only when the
    request asks (`truncate`), else one that cannot fit is refused. With `repo`, a FIM prompt
    starts with chunks of other files of the repository (farther than the client's own
    context files, so those are kept first when not all fit)."""
    source, prompts = request.input, lm.prompts
    try:
        if isinstance(source, FimInput):
            stable = stable_prefix if request.stable_prefix is None else request.stable_prefix
            retrieved, retrieval_ms = (), 0.0
            if repo is not None:
                context = repo.context(source.prefix, source.suffix, source.path)
                retrieved, retrieval_ms = tuple(context.files), context.retrieval_ms
            prompt = prompts.fim(
                source.prefix,
                source.suffix,
                files=(*retrieved, *source.files),
                path=source.path,
                mode=source.mode or fim_mode,
                reserve=request.max_tokens,
                stable_prefix=stable and request.cache_prompt,
            )
            return dataclasses.replace(prompt, retrieval_ms=retrieval_ms)
        if isinstance(source, ChatInput):
            return prompts.chat(
                list(source.messages), reserve=request.max_tokens, truncate=request.truncate
            )
        return prompts.text(source.text, reserve=request.max_tokens, truncate=request.truncate)
    except CodeGemmaError as exc:
        raise RequestError(str(exc), param="prompt") from exc
    except ValueError as exc:  # e.g. messages that are not a conversation
        raise RequestError(str(exc), param="prompt") from exc
