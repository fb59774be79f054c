"""Stop strings that may arrive split across tokens, held back so they never reach the output."""

from __future__ import annotations

from collections.abc import Sequence


class StopStringFilter:
    """Passes streamed text through until a stop string appears; the stop string is never emitted.

    Text that could be the start of a stop string is held until the next piece settles it.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self.matched: str | None = None

    def feed(self, piece: str) -> str:
        """Text that is now safe to emit. After a match, `matched` is set and nothing more comes."""
        if self.matched is not None:
            return ""
        text = self._held + piece
        hit = min(
            ((text.find(s), s) for s in self.stops if s in text), default=None, key=lambda h: h[0]
        )
        if hit is not None:
            self._held = ""
            self.matched = hit[1]
            return text[: hit[0]]
        keep = self._longest_partial_stop(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """Release held text at the end of generation (it did not become a stop string)."""
        held, self._held = self._held, ""
        return held

    def _longest_partial_stop(self, text: str) -> int:
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
