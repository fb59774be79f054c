"""Making prompts fit the context window: a clear error, or truncation the caller asked for."""

from __future__ import annotations

from collections.abc import Callable

from codegemma.errors import PromptTooLongError


def check_fits(prompt_tokens: int, context_length: int) -> None:
    """Raise unless at least one token can be generated after the prompt."""
    if prompt_tokens >= context_length:
        raise PromptTooLongError(
            f"the prompt is {prompt_tokens} tokens but the context window holds {context_length} "
            "(the prompt plus at least one new token); shorten it or pass truncate=True "
            "(CLI: --truncate)"
        )


def keep_last_tokens(ids: list[int], budget: int, bos_id: int) -> tuple[list[int], int]:
    """Keep BOS and the most recent tokens so that at most `budget` remain; report how many went."""
    if len(ids) <= budget:
        return ids, 0
    head = [bos_id] if ids and ids[0] == bos_id else []
    kept = head + ids[len(ids) - (budget - len(head)) :]
    return kept, len(ids) - len(kept)


def fit_fim_by_lines(
    prefix: str, suffix: str, encode: Callable[[str, str], list[int]], budget: int
) -> tuple[list[int], int]:
    """Token ids of a FIM prompt within `budget`, dropping whole lines far from the cursor.

    Lines go from the start of the prefix and the end of the suffix, the suffix kept to at most
    a quarter of the budget while the prefix is long. Cutting at line starts keeps the cut in
    the same place while the user types near the cursor. Returns (ids, tokens dropped).
    """
    ids = encode(prefix, suffix)
    original = len(ids)
    before, after = prefix.splitlines(keepends=True), suffix.splitlines(keepends=True)
    while len(ids) > budget:
        suffix_tokens = len(encode("", "".join(after))) if after else 0
        if after and (suffix_tokens > budget // 4 or len(before) <= 1):
            after.pop()
        elif len(before) > 1:
            before.pop(0)
        elif before:
            before = [_tail_chars(before[0], len(ids) - budget)]
            if not before[0]:
                before = []
        else:
            raise PromptTooLongError(
                f"the FIM prompt does not fit in {budget} tokens even with no prefix or suffix"
            )
        ids = encode("".join(before), "".join(after))
    return ids, original - len(ids)


def _tail_chars(line: str, excess_tokens: int) -> str:
    """A single over-long line: drop characters from its start (a token is at least 1 char)."""
    return line[min(len(line), max(1, excess_tokens)) :]
