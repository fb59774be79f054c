"""Editor-oriented stops from llama.cpp's `/infill`: minimum indentation and a newline deadline."""

from __future__ import annotations

import time


class EditorLimits:
    """Filters streamed text; `hit` is set once a limit ends the completion.

    `min_indent` (llama.cpp `n_indent`): a new line indented less than this ends the completion
    before that line, so a completion stays inside the block being written. The text of a new
    line is held until its first non-blank character shows its indentation. `deadline_ms`
    (`t_max_predict_ms`): once a newline has been produced, the completion ends when this long
    has passed since the first token.
    """

    def __init__(self, min_indent: int = 0, deadline_ms: float = 0.0) -> None:
        self.min_indent = min_indent
        self.deadline_ms = deadline_ms
        self.hit = False
        self._held = ""  # text from the latest newline on, while its indentation is unknown
        self._seen_newline = False
        self._first_token_at: float | None = None

    def feed(self, piece: str) -> str:
        """Text that is now safe to emit."""
        now = time.perf_counter()
        if self._first_token_at is None:
            self._first_token_at = now
        if self.hit:
            return ""
        self._seen_newline = self._seen_newline or "\n" in piece
        out = self._indent_filter(piece) if self.min_indent > 0 else piece
        if (
            self.deadline_ms > 0
            and self._seen_newline
            and (now - self._first_token_at) * 1000 > self.deadline_ms
        ):
            self.hit = True
        return out

    def flush(self) -> str:
        """Held text at the end of generation (a last line that never showed its indentation)."""
        held, self._held = self._held, ""
        return "" if self.hit else held

    def _indent_filter(self, piece: str) -> str:
        out = []
        for ch in piece:
            if self._held:  # inside the indentation of a new line; _held starts with "\n"
                if ch in " \t":
                    self._held += ch
                    continue
                if ch == "\n":  # a blank line says nothing about indentation
                    out.append(self._held)
                    self._held = ch
                    continue
                if len(self._held) - 1 < self.min_indent:
                    self.hit = True  # the completion ends before the dedented line
                    self._held = ""
                    break
                out.append(self._held)
                self._held = ""
            if ch == "\n":
                self._held = ch
            else:
                out.append(ch)
        return "".join(out)
