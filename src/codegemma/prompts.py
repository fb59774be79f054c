"""Prompts as token ids, fitted to the context window: one builder for the API and the server.

The tokenizer encodes the text between special tokens on its own, so a prompt's ids are the
ids of its pieces (prefix, suffix, each context file, each chat turn) joined by the special
tokens' ids. Each piece is tokenized once, and every cut falls on a token boundary found from
the tokens' byte lengths: building and fitting a prompt costs time linear in its size,
however much of it must go.

Cuts that keep a KV cache useful from one keystroke to the next fall on lines chosen by their
content, never by their position, so a chosen line stays chosen while text scrolls past: the
prefix of a FIM prompt that must shrink starts at an *anchor line* (a blank line, or one whose
checksum is 0 modulo `ANCHOR_GRID`), and a long prefix sent as "the last N characters before
the cursor" may start at the line with the smallest checksum near its beginning
(`stable_prefix_start`).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import zlib
from collections.abc import Mapping, Sequence

from codegemma.chat import CHAT_STOP_TOKENS, chat_turns
from codegemma.errors import PromptTooLongError
from codegemma.fim import (
    DEFAULT_FIM_MODE,
    FILE_SEPARATOR,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_STOP_TOKENS,
    FIM_SUFFIX,
    ContextFile,
    FimMode,
    as_context_file,
)
from codegemma.tokenizer import Tokenizer

DEFAULT_RESERVE = 256  # room kept for new tokens when a request sets no token limit
ANCHOR_GRID = 16  # one non-blank line in this many is an anchor, on average
STABLE_MIN_CHARS = 1024  # shorter prefixes are taken as they are
STABLE_MAX_FRACTION = 0.25  # a stable start drops at most this share of the prefix


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A prompt as the model will see it."""

    ids: list[int]
    stop_tokens: tuple[str, ...]  # token texts that end generation
    truncated_tokens: int = 0  # prompt tokens left out to fit, or to start at a stable line
    dropped_files: int = 0  # context files left out to fit
    dropped_file_tokens: int = 0  # their tokens
    retrieval_ms: float = 0.0  # time spent choosing repository context for it (serve --repo)


class _Piece:
    """One text's tokens, with the byte offset where each token ends."""

    def __init__(self, tokenizer: Tokenizer, text: str) -> None:
        self.data = text.encode("utf-8")
        self.ids = tokenizer.encode(text, add_bos=False)
        self.ends = list(itertools.accumulate(tokenizer.byte_lengths(self.ids)))
        if (self.ends[-1] if self.ends else 0) != len(self.data):
            raise ValueError("the tokenizer does not give the text's bytes back")  # not Gemma's

    def __len__(self) -> int:
        return len(self.ids)

    def first_token_at(self, offset: int) -> int:
        """Index of the first token that starts at or after byte `offset`."""
        if offset <= 0:
            return 0
        return bisect.bisect_left(self.ends, offset) + 1  # token i starts where i-1 ends

    def tokens_within(self, offset: int) -> int:
        """How many tokens end at or before byte `offset`."""
        return bisect.bisect_right(self.ends, offset)


class PromptBuilder:
    """Token ids of FIM, plain and chat prompts within `context_length`, leaving `reserve`
    tokens (a request's token limit) free for the answer."""

    def __init__(self, tokenizer: Tokenizer, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        self._special = {t: tokenizer.token_id(t) for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)}
        self._separator = tokenizer.token_id(FILE_SEPARATOR)

    def budget(self, reserve: int | None) -> int:
        """Prompt tokens allowed when `reserve` tokens (None: the default) must stay free."""
        reserve = DEFAULT_RESERVE if reserve is None else reserve
        return max(1, self.context_length - max(1, min(reserve, self.context_length // 2)))

    # --------------------------------------------------------------------------- FIM

    def fim(
        self,
        prefix: str,
        suffix: str = "",
        *,
        files: Sequence[ContextFile | tuple[str, str]] = (),
        path: str | None = None,
        mode: FimMode | None = None,
        reserve: int | None = None,
        stable_prefix: bool = False,
        truncate: bool = True,
    ) -> Prompt:
        """The FIM prompt for a cursor between `prefix` and `suffix`, after `files`.

        Within the budget, the current file comes first: the suffix keeps whole lines from its
        start up to a quarter of the budget, and the prefix starts at the earliest anchor line
        after which everything fits (else the earliest line, else the last tokens). Context
        files fill what is left, nearest (last) first, in the order given; the rest are
        dropped and reported. `stable_prefix`: a long prefix starts at its stable line (see
        `stable_prefix_start`). Without `truncate`, a prompt that does not fit is an error.
        """
        mode = mode or DEFAULT_FIM_MODE
        if mode not in ("psm", "spm"):
            raise ValueError(f"FIM mode must be 'psm' or 'spm', got {mode!r}")
        if any(token is None for token in self._special.values()):
            raise PromptTooLongError("this model's tokenizer has no FIM tokens")
        head = self._encode(f"{path}\n") if path is not None else []
        before, after = _Piece(self.tokenizer, prefix), _Piece(self.tokenizer, suffix)
        start = before.first_token_at(stable_prefix_start(before.data)) if stable_prefix else 0
        budget = self.budget(reserve)
        fixed = 1 + len(head) + 3  # BOS, the path line, three FIM tokens
        kept_after = len(after)
        if fixed + len(before) - start + kept_after > budget:
            if not truncate:
                total = fixed + len(before) + len(after)
                raise PromptTooLongError(
                    _too_long("FIM prompt", total, budget, self.context_length)
                )
            kept_after = _suffix_tokens(after, max(1, budget // 4))
            start = _prefix_start(before, start, budget - fixed - kept_after)
        used = fixed + len(before) - start + kept_after
        context, dropped, dropped_tokens = self._files(files, budget - used, truncate)
        ids = [
            self.tokenizer.bos_id,
            *context,
            *head,
            *self._body(before, start, after, kept_after, mode),
        ]
        cut = start + len(after) - kept_after
        return Prompt(ids, FIM_STOP_TOKENS, cut, dropped, dropped_tokens)

    def _body(self, before: _Piece, start: int, after: _Piece, kept: int, mode: FimMode):
        prefix = [self._special[FIM_PREFIX], *before.ids[start:]]
        suffix = [self._special[FIM_SUFFIX], *after.ids[:kept]]
        order = prefix + suffix if mode == "psm" else suffix + prefix
        return [*order, self._special[FIM_MIDDLE]]

    def _files(self, files, room: int, truncate: bool) -> tuple[list[int], int, int]:
        """The ids of the context files that fit in `room` tokens, nearest first, each
        followed by the file separator; and how many files and tokens were dropped."""
        encoded = [self._encode(f"{f.path}\n{f.content}") for f in map(as_context_file, files)]
        keep = 0
        for ids in reversed(encoded):
            if len(ids) + 1 > room:
                break
            room -= len(ids) + 1
            keep += 1
        dropped = encoded[: len(encoded) - keep]
        if dropped and not truncate:
            raise PromptTooLongError(
                f"{len(dropped)} context files do not fit in the context window"
            )
        kept = encoded[len(encoded) - keep :]
        return (
            [t for ids in kept for t in (*ids, self._separator)],
            len(dropped),
            sum(map(len, dropped)),
        )

    # ------------------------------------------------------------------ text and chat

    def text(self, text: str, *, reserve: int | None = None, truncate: bool = False) -> Prompt:
        """Raw text after BOS (often a hand-made FIM prompt: FIM stop tokens end it)."""
        ids = self.tokenizer.encode(text)
        return self._fitted(ids, FIM_STOP_TOKENS, reserve, truncate, "prompt")

    def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        reserve: int | None = None,
        truncate: bool = False,
    ) -> Prompt:
        """The next assistant turn of a conversation. Truncated, the oldest exchanges (a user
        turn and its answer) go first; a last turn longer than the budget keeps its end."""
        turns, tail = chat_turns(messages)
        encoded = [self._encode(turn) for turn in turns]
        closing = self._encode(tail)
        budget = self.budget(reserve)
        total = 1 + sum(map(len, encoded)) + len(closing)
        first = 0
        if total > budget and truncate:
            while first + 2 < len(encoded) and total > budget:
                total -= len(encoded[first]) + len(encoded[first + 1])
                first += 2
        ids = [self.tokenizer.bos_id, *(t for ids in encoded[first:] for t in ids), *closing]
        dropped = sum(map(len, encoded[:first]))
        prompt = self._fitted(ids, CHAT_STOP_TOKENS, reserve, truncate, "conversation")
        return dataclasses.replace(prompt, truncated_tokens=prompt.truncated_tokens + dropped)

    def _fitted(self, ids, stops, reserve, truncate: bool, what: str) -> Prompt:
        budget = self.budget(reserve)
        if len(ids) <= budget:
            return Prompt(ids, stops)
        if not truncate:
            raise PromptTooLongError(_too_long(what, len(ids), budget, self.context_length))
        kept = [ids[0], *ids[len(ids) - budget + 1 :]]  # BOS, then the most recent tokens
        return Prompt(kept, stops, len(ids) - len(kept))

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_bos=False)


def _too_long(what: str, tokens: int, budget: int, context: int) -> str:
    return (
        f"the {what} is {tokens} tokens but at most {budget} fit ({context} in the context "
        "window, less the tokens kept for the answer); shorten it, lower the token limit, or "
        'ask for truncation (API truncate=True, CLI --truncate, HTTP "truncate": true)'
    )


def _suffix_tokens(after: _Piece, limit: int) -> int:
    """Tokens of the suffix to keep: whole lines from its start, at most `limit` tokens."""
    if len(after) <= limit:
        return len(after)
    ends = [i + 1 for i, byte in enumerate(after.data) if byte == 0x0A]  # byte after each \n
    fitting = [n for n in map(after.tokens_within, ends) if n <= limit]
    return max(fitting, default=0)


def _prefix_start(before: _Piece, start: int, room: int) -> int:
    """The first prefix token to keep so that at most `room` remain: at the earliest anchor
    line that fits, else the earliest line start, else just the last `room` tokens."""
    if room <= 0:
        raise PromptTooLongError("the FIM prompt does not fit even with no prefix")
    need = len(before) - room  # the first token that may be kept
    if need <= start:
        return start
    for offsets in (anchor_offsets(before.data), _line_starts(before.data)):
        firsts = [before.first_token_at(offset) for offset in offsets]
        at = bisect.bisect_left(firsts, need)
        if at < len(firsts):
            return firsts[at]
    return need


def _line_starts(data: bytes) -> list[int]:
    return [i + 1 for i, byte in enumerate(data[:-1]) if byte == 0x0A]


def anchor_offsets(data: bytes) -> list[int]:
    """Byte offsets of the starts of anchor lines in `data` (never 0: the first line may be
    partial)."""
    offsets = []
    start = data.find(b"\n") + 1
    while 0 < start < len(data):
        end = data.find(b"\n", start)
        body = (data[start:] if end < 0 else data[start:end]).strip()
        if not body or zlib.crc32(body) % ANCHOR_GRID == 0:
            offsets.append(start)
        if end < 0:
            break
        start = end + 1
    return offsets


def stable_prefix_start(data: bytes) -> int:
    """Where a long prefix (UTF-8 bytes) should start so a client's sliding window reuses the
    cache.

    Clients that send "the last N characters before the cursor" start their prefix at a point
    that moves with every keystroke, usually mid-line. Among the line starts in the first
    quarter of the prefix, this picks the one whose two lines have the smallest checksum (the
    winnowing rule): as the window slides, that line stays the pick until it leaves the window
    or a line with a smaller checksum enters the quarter, on average once every ten lines or
    so, so the prompt's first tokens stay the same across keystrokes. Returns 0 (keep
    everything) for short prefixes.
    """
    if len(data) < STABLE_MIN_CHARS:
        return 0
    limit = int(len(data) * STABLE_MAX_FRACTION)
    best: tuple[int, int] | None = None  # (checksum, offset)
    start = data.find(b"\n") + 1  # the first line may be partial: never a candidate
    while 0 < start <= limit:
        end = data.find(b"\n", start)
        after = data.find(b"\n", end + 1) if end >= 0 else -1
        if after < 0:
            break
        key = zlib.crc32(data[start:after])
        if best is None or key < best[0]:
            best = (key, start)
        start = end + 1
    return best[1] if best else 0
