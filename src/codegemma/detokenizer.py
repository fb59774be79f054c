"""Turn generated token ids into text one token at a time, never splitting a character.

Gemma spells characters it has no piece for as byte-fallback tokens, one UTF-8 byte each, so a
single emoji can take four tokens. ``Tokenizer.decode`` (like transformers) decodes each
maximal run of such bytes as a whole: a valid run becomes its text, an invalid one becomes one
U+FFFD per byte. The streamer reproduces that while holding back only the current byte run.
"""

from __future__ import annotations

import operator

from codegemma.tokenizer import Tokenizer, decode_byte_run

_REPLACEMENT = "\ufffd"


class StreamingDetokenizer:
    """Incremental ``decode``: the pushes and the final flush concatenate to ``decode(ids)``.

    Text is held back only while the latest tokens are byte-fallback tokens whose bytes are
    valid UTF-8 so far, since a later byte in the same run could still turn the whole run into
    U+FFFD characters. An invalid run is emitted at once. A valid run longer than
    ``max_held_bytes`` has its complete characters emitted early, so a model that emits byte
    tokens forever cannot stall the stream; only if such an over-long run later turned invalid
    would the stream differ from ``decode`` (the early characters stay text). Work per push is
    bounded by ``max_held_bytes``, whatever the length of the stream.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        skip_special_tokens: bool = False,
        max_held_bytes: int = 64,
    ) -> None:
        if max_held_bytes < 4:
            # Fewer than four bytes could not hold one complete character.
            raise ValueError(f"max_held_bytes must be at least 4, got {max_held_bytes}")
        self._tokenizer = tokenizer
        self._skip = tokenizer.skippable_ids if skip_special_tokens else frozenset()
        self._max_held = max_held_bytes
        self._held = bytearray()  # bytes of the current run not yet emitted
        self._broken = False  # the current run is already known invalid, and was emitted as such

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes, possibly ``""``."""
        byte = self._tokenizer.byte_value(token_id)  # also rejects ids outside the vocabulary
        if operator.index(token_id) in self._skip:
            # decode() drops these before forming byte runs, so they do not end a run either.
            return ""
        if byte is None:
            return self._end_run() + self._tokenizer.decode([token_id])
        if self._broken:
            return _REPLACEMENT
        self._held.append(byte)
        complete = _complete_prefix(self._held)
        if complete is None:
            count = len(self._held)
            self._held.clear()
            self._broken = True
            return _REPLACEMENT * count
        if len(self._held) < self._max_held:
            return ""
        text = self._held[:complete].decode("utf-8")
        del self._held[:complete]
        return text

    def flush(self) -> str:
        """Return whatever is still held (end of stream); the next push starts afresh."""
        return self._end_run()

    def _end_run(self) -> str:
        text = "" if self._broken else decode_byte_run(self._held)
        self._held.clear()
        self._broken = False
        return text


def _complete_prefix(data: bytearray) -> int | None:
    """Length of the longest prefix of whole characters, or None if ``data`` is invalid UTF-8.

    Bytes after that prefix are the start of a character that may still be completed.
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # CPython reports the first problem; "unexpected end of data" means everything up to
        # the end was a valid beginning of one more character.
        if exc.reason == "unexpected end of data":
            return exc.start
        return None
    return len(data)
