"""The Gemma tokenizer of a GGUF file, rebuilt as a SentencePiece model from its metadata.

A GGUF of architecture `gemma` carries the SentencePiece vocabulary it was made from as three
parallel arrays: `tokenizer.ggml.tokens` (piece text), `.scores` (BPE merge priority) and
`.token_type` (SentencePiece's piece types, same numbering). Adding Gemma's fixed settings
(BPE, byte fallback, split digits, identity normalization, no dummy prefix, whitespace kept)
gives back a model that encodes exactly like the original.

llama.cpp's converter changes a few things on the way, which are undone here:
- SentencePiece USER_DEFINED pieces are written as NORMAL (only pieces listed in
  `tokenizer_config.json` keep a special type). A BPE trainer scores every normal piece
  minus its merge rank (the first one -0.0), while user-defined pieces score +0.0, so a
  NORMAL piece scored exactly +0.0 was user-defined; it is made so again.
- Pieces listed in `tokenizer_config.json` get their "▁" replaced by spaces, and
  `<|...|>`-style ones become CONTROL: spaces go back to "▁", and Gemma's FIM, turn and mask
  tokens (user-defined in every Gemma tokenizer) are user-defined again.
- The vocabulary is padded to the embedding's rows with UNUSED `[PAD<n>]` pieces: dropped.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from codegemma.gguf.reader import GGUFError
from codegemma.tokenizer import Tokenizer
from codegemma.tokenizer_training import SPECIAL_TOKENS

KEY_MODEL = "tokenizer.ggml.model"
KEY_TOKENS = "tokenizer.ggml.tokens"
KEY_SCORES = "tokenizer.ggml.scores"
KEY_TYPES = "tokenizer.ggml.token_type"
ID_KEYS = {  # metadata key -> the piece text Gemma uses for it
    "tokenizer.ggml.bos_token_id": "<bos>",
    "tokenizer.ggml.eos_token_id": "<eos>",
    "tokenizer.ggml.unknown_token_id": "<unk>",
    "tokenizer.ggml.padding_token_id": "<pad>",
    "tokenizer.ggml.eot_token_id": "<end_of_turn>",
    "tokenizer.ggml.fim_pre_token_id": "<|fim_prefix|>",
    "tokenizer.ggml.fim_suf_token_id": "<|fim_suffix|>",
    "tokenizer.ggml.fim_mid_token_id": "<|fim_middle|>",
    "tokenizer.ggml.fim_sep_token_id": "<|file_separator|>",
}

# SentencePiece piece types (GGUF's token_type uses the same numbers).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_SPACE = "\u2581"
_FILLER = re.compile(r"\[PAD\d+\]")


@dataclasses.dataclass
class Vocabulary:
    """The three parallel token arrays as GGUF stores them."""

    tokens: list[str]
    scores: np.ndarray  # float32
    types: np.ndarray  # int32


def tokenizer_from_metadata(metadata: dict[str, Any], source: Path) -> tuple[Tokenizer, list[str]]:
    """The tokenizer of a GGUF file's metadata, and notes on repairs made to the vocabulary."""
    proto, notes = proto_from_metadata(metadata, source)
    return Tokenizer.from_sentencepiece_bytes(proto.SerializeToString(), source), notes


def proto_from_metadata(
    metadata: dict[str, Any], source: Path
) -> tuple[model_pb2.ModelProto, list[str]]:
    """A SentencePiece ModelProto equivalent to the one the GGUF file was made from."""
    vocabulary = _read_vocabulary(metadata, source)
    notes = _repair(vocabulary)
    ids = _validate(vocabulary, source)
    return _build_proto(vocabulary, ids), notes


def vocabulary_from_proto(proto: model_pb2.ModelProto, rows: int) -> Vocabulary:
    """The token arrays to write for a SentencePiece model, as llama.cpp's converter does:
    user-defined pieces with spaces for "▁", padded to `rows` with UNUSED `[PAD<id>]`."""
    tokens, scores, types = [], [], []
    for piece in proto.pieces:
        text = piece.piece
        if piece.type == USER_DEFINED:
            text = text.replace(_SPACE, " ")
        tokens.append(text)
        scores.append(piece.score)
        types.append(piece.type)
    for index in range(len(tokens), rows):
        tokens.append(f"[PAD{index}]")
        scores.append(-1000.0)
        types.append(UNUSED)
    return Vocabulary(tokens, np.array(scores, np.float32), np.array(types, np.int32))


def _read_vocabulary(metadata: dict[str, Any], source: Path) -> Vocabulary:
    model = metadata.get(KEY_MODEL)
    if model != "llama":
        raise GGUFError(
            f"{source}: {KEY_MODEL} is {model!r}; Gemma files use 'llama' (SentencePiece)"
        )
    tokens, scores, types = (metadata.get(k) for k in (KEY_TOKENS, KEY_SCORES, KEY_TYPES))
    found = {KEY_TOKENS: tokens, KEY_SCORES: scores, KEY_TYPES: types}
    missing = [key for key, value in found.items() if value is None]
    if missing:
        raise GGUFError(f"{source} has no tokenizer vocabulary: missing {', '.join(missing)}")
    if not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
        raise GGUFError(f"{source}: {KEY_TOKENS} must be an array of strings")
    for key, array in ((KEY_SCORES, scores), (KEY_TYPES, types)):
        if not isinstance(array, np.ndarray) or len(array) != len(tokens):
            raise GGUFError(
                f"{source}: {key} must be a numeric array as long as {KEY_TOKENS} ({len(tokens)})"
            )
    return Vocabulary(list(tokens), scores.astype(np.float32), types.astype(np.int32))


def _repair(vocabulary: Vocabulary) -> list[str]:
    """Undo llama.cpp's converter changes (see the module docstring); notes on what changed."""
    tokens, scores, types = vocabulary.tokens, vocabulary.scores, vocabulary.types
    notes = []
    end = len(tokens)
    while end > 0 and types[end - 1] == UNUSED and _FILLER.fullmatch(tokens[end - 1]):
        end -= 1
    if end < len(tokens):
        notes.append(f"tokenizer: dropped {len(tokens) - end} trailing [PAD] filler tokens")
        del tokens[end:]
        vocabulary.scores, vocabulary.types = scores[:end], types[:end].copy()
        scores, types = vocabulary.scores, vocabulary.types
    spaced = [i for i, t in enumerate(tokens) if " " in t]
    for i in spaced:
        tokens[i] = tokens[i].replace(" ", _SPACE)
    if spaced:
        notes.append(f"tokenizer: {len(spaced)} tokens had spaces for '\u2581'; restored")
    restored = _restore_user_defined(tokens, scores, types)
    if restored:
        shown = ", ".join(repr(tokens[i]) for i in restored[:5])
        more = f" and {len(restored) - 5} more" if len(restored) > 5 else ""
        notes.append(
            f"tokenizer: {len(restored)} tokens made user-defined again as in Gemma's "
            f"SentencePiece model ({shown}{more})"
        )
    return notes


def _restore_user_defined(tokens: list[str], scores: np.ndarray, types: np.ndarray) -> list[int]:
    normal = types == NORMAL
    # Only a vocabulary scored like a trained BPE model (normal pieces mostly negative) tells
    # user-defined pieces apart by their +0.0 score.
    bpe_scored = np.count_nonzero(scores[normal] < 0) * 2 > np.count_nonzero(normal)
    changed = normal & (scores == 0) & ~np.signbit(scores) if bpe_scored else np.zeros_like(normal)
    named = [i for i, text in enumerate(tokens) if text in SPECIAL_TOKENS]
    changed[named] |= normal[named] | (types[named] == CONTROL)
    indices = np.flatnonzero(changed)
    types[indices] = USER_DEFINED
    return indices.tolist()


def _validate(vocabulary: Vocabulary, source: Path) -> dict[str, int]:
    """Check what SentencePiece requires; return the id of each token text."""
    tokens, types = vocabulary.tokens, vocabulary.types
    bad = np.flatnonzero((types < NORMAL) | (types > BYTE))
    if bad.size:
        raise GGUFError(f"{source}: token {bad[0]} has unknown token type {types[bad[0]]}")
    seen: dict[str, int] = {}
    for i, text in enumerate(tokens):
        if not text:
            raise GGUFError(f"{source}: token {i} has empty text")
        if text in seen:
            raise GGUFError(f"{source}: token text {text!r} appears twice (ids {seen[text]}, {i})")
        seen[text] = i
    if np.count_nonzero(types == UNKNOWN) != 1:
        raise GGUFError(f"{source}: the vocabulary must have exactly one unknown token")
    byte_count = np.count_nonzero(types == BYTE)
    if byte_count not in (0, 256):
        raise GGUFError(f"{source}: the vocabulary has {byte_count} byte tokens, not 256")
    return seen


def _build_proto(vocabulary: Vocabulary, ids: dict[str, int]) -> model_pb2.ModelProto:
    proto = model_pb2.ModelProto()
    pieces = proto.pieces
    scores, types = vocabulary.scores.tolist(), vocabulary.types.tolist()
    for text, score, kind in zip(vocabulary.tokens, scores, types, strict=True):
        pieces.add(piece=text, score=score, type=kind)
    trainer = proto.trainer_spec
    trainer.model_type = model_pb2.TrainerSpec.BPE
    trainer.vocab_size = len(vocabulary.tokens)
    trainer.byte_fallback = bool(np.any(vocabulary.types == BYTE))
    trainer.split_digits = True
    trainer.allow_whitespace_only_pieces = True
    trainer.unk_id = int(np.flatnonzero(vocabulary.types == UNKNOWN)[0])
    trainer.bos_id = ids.get("<bos>", -1)
    trainer.eos_id = ids.get("<eos>", -1)
    trainer.pad_id = ids.get("<pad>", -1)
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = False
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return proto
