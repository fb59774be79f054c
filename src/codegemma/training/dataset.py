"""Training rows: documents cut into windows, FIM-transformed, packed into fixed-length rows.

A row is `<bos>` followed by pieces of files in order. Each piece is a window of one file that
fits in the space left in the row, so no example is ever split across rows and padding only
fills the few tokens a row cannot use. Windows end at a line end wherever one is in reach, so
their text starts and stops on line boundaries as an editor's context does. A file's first
piece carries its `path\\n` header, as `fim_prompt(..., path=...)` writes it at inference time;
a piece that ends a file, and every FIM piece, is followed by `<|file_separator|>`, so the
model learns to end a middle with a token the engine stops on.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable

import torch

from codegemma.fim import FILE_SEPARATOR
from codegemma.tokenizer import Tokenizer
from codegemma.training.fim_transform import FimExample, FimOptions, fim_transform
from codegemma.training.split_points import candidates_for

# Tokens reserved per piece beyond its text: three sentinels, the separator, and room for the
# few extra tokens that cutting the text at two points can cost when it is encoded again.
_RESERVED = 8


@dataclasses.dataclass(frozen=True)
class Document:
    """One file: `path` is its header ("" for none), `text` its content."""

    path: str
    text: str


def encode_example(example: FimExample, tokenizer: Tokenizer) -> list[int]:
    """Token ids of a FIM example; sentinels are ids, never spelled out in the text."""
    ids: list[int] = []
    for sentinel, body in example.pieces():
        if sentinel is not None:
            ids.append(_token(tokenizer, sentinel))
        ids.extend(tokenizer.encode(body, add_bos=False))
    return ids


def pack_rows(
    documents: Iterable[Document],
    tokenizer: Tokenizer,
    seq_len: int,
    *,
    options: FimOptions | None = None,
    seed: int = 0,
    min_piece: int = 16,
    piece_tokens: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Rows (N, seq_len) of token ids, right-padded with `<pad>`; see the module docstring.

    `options` set the FIM rate, SPM share and split points; `seed` makes the draws repeatable.
    A row with fewer than `min_piece` tokens of room left is closed rather than given a sliver.
    `piece_tokens=(lo, hi)` caps each window at a length drawn uniformly from that range, so a
    row holds several shorter examples (more middles to learn from); None fills each row.
    """
    if seq_len < min_piece + _RESERVED + 1:
        raise ValueError(f"seq_len {seq_len} is too short to pack anything")
    options = options or FimOptions()
    rng = random.Random(seed)
    packer = _RowPacker(seq_len, tokenizer.bos_id, tokenizer.pad_id)
    for doc in documents:
        _add_document(packer, doc, tokenizer, options, rng, min_piece, piece_tokens)
    return packer.finish()


class _RowPacker:
    """Rows being filled: room left in the current one, append, close."""

    def __init__(self, seq_len: int, bos: int, pad: int) -> None:
        self.seq_len, self.bos, self.pad = seq_len, bos, pad
        self.rows: list[list[int]] = []
        self.row = [bos]

    def room(self) -> int:
        return self.seq_len - len(self.row)

    def add(self, tokens: list[int]) -> None:
        self.row.extend(tokens[: self.room()])  # re-encoding overshoot beyond the reserve: cut

    def close(self) -> None:
        if len(self.row) > 1:
            self.rows.append(self.row)
        self.row = [self.bos]

    def finish(self) -> torch.Tensor:
        self.close()
        out = torch.full((len(self.rows), self.seq_len), self.pad, dtype=torch.int32)
        for i, ids in enumerate(self.rows):
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
        return out


def _add_document(packer, doc, tokenizer, options, rng, min_piece, piece_tokens) -> None:
    """Add one file as windows, each filling the room left in the current row (or its cap)."""
    separator = _token(tokenizer, FILE_SEPARATOR)
    ids = tokenizer.encode(doc.text, add_bos=False)
    candidates = candidates_for(doc.path, doc.text) if options.splits == "syntax" else None
    header = tokenizer.encode(f"{doc.path}\n", add_bos=False) if doc.path else []
    pos, char_pos = 0, 0
    while pos < len(ids):
        head = header if pos == 0 else []
        room = packer.room() - len(head) - _RESERVED
        if room < min_piece:
            packer.close()
            continue
        cap = rng.randint(*piece_tokens) if piece_tokens else room
        n = min(len(ids) - pos, room, max(min_piece, cap))
        n = _clean_cut(tokenizer, ids, pos, _line_cut(tokenizer, ids, pos, n, min_piece))
        piece = tokenizer.decode(ids[pos : pos + n])
        local = None
        if candidates is not None and doc.text.startswith(piece, char_pos):
            local = candidates.within(char_pos, char_pos + len(piece))
        example = fim_transform(piece, rng, options, local)
        tokens = head + encode_example(example, tokenizer)
        pos, char_pos = pos + n, char_pos + len(piece)
        if pos == len(ids) or example.mode != "plain":
            tokens.append(separator)
        packer.add(tokens)


def _line_cut(tokenizer: Tokenizer, ids: list[int], pos: int, n: int, shortest: int) -> int:
    """Shorten a window to end at a line end if one lies at least `shortest` tokens in: every
    window then starts and ends on a line boundary, as the context of an editor's prompt does."""
    if pos + n >= len(ids):
        return n
    for end in range(n, shortest - 1, -1):
        if tokenizer.decode(ids[pos + end - 1 : pos + end]).endswith("\n"):
            return end
    return n


def _clean_cut(tokenizer: Tokenizer, ids: list[int], pos: int, n: int) -> int:
    """Shorten a window so that it does not end inside a run of byte-fallback tokens."""
    while (
        1 < n
        and pos + n < len(ids)
        and tokenizer.byte_value(ids[pos + n]) is not None
        and tokenizer.byte_value(ids[pos + n - 1]) is not None
    ):
        n -= 1
    return n


def _token(tokenizer: Tokenizer, text: str) -> int:
    token = tokenizer.token_id(text)
    if token is None:
        raise ValueError(f"the tokenizer has no {text} token: it is not a CodeGemma tokenizer")
    return token


def split_rows(rows: torch.Tensor, held_out: float, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(train, held_out) rows: a seeded random `held_out` share (at least one row) set aside."""
    if not 0.0 < held_out < 1.0 or len(rows) < 2:
        raise ValueError("need at least two rows and 0 < held_out < 1")
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    count = max(1, round(len(rows) * held_out))
    return rows[order[count:]], rows[order[:count]]
