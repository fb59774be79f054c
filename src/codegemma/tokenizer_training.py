"""Train small SentencePiece models with the same settings as Gemma's tokenizer.

Real CodeGemma checkpoints ship a 256k-piece model; this exists so tests and experiments can
build a tiny tokenizer that behaves the same way (byte fallback, split digits, literal
whitespace, FIM and chat tokens as whole pieces) without downloading anything.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from codegemma.tokenizer import TokenizerError

# Gemma's user-defined tokens, in Gemma's id order. They follow <pad>/<eos>/<bos>/<unk>
# (ids 0-3), so <mask> gets id 4 as in the real model; the rest get smaller ids than the real
# ones (67-70, 106, 107), which is why code must look them up by text.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<mask>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|file_separator|>",
    "<start_of_turn>",
    "<end_of_turn>",
)

# SentencePiece silently drops training sentences longer than this many bytes (default 4192),
# which would discard whole source files; allow anything a test corpus could reasonably hold.
_MAX_TEXT_BYTES = 1 << 24


def train_tokenizer(
    texts: Iterable[str],
    out_path: str | Path,
    vocab_size: int,
    *,
    max_piece_length: int = 32,
    character_coverage: float = 0.9995,
    hard_vocab_limit: bool = True,
    num_threads: int = 1,
) -> Path:
    """Train a Gemma-style BPE SentencePiece model on ``texts`` and write it to ``out_path``.

    Each text is one training sentence; newlines, tabs and runs of spaces inside it are kept.
    ``vocab_size`` counts everything, including the 256 byte pieces and the special tokens, so
    it must be well above 267. With ``hard_vocab_limit=False`` a corpus too small to reach
    ``vocab_size`` yields a smaller vocabulary instead of an error. Characters outside
    ``character_coverage`` are left to byte fallback. Training uses every sentence (no
    sampling), so the same texts always give a byte-identical model.
    """
    if isinstance(texts, str):
        # A bare string would be iterated character by character: almost certainly a mistake.
        raise TokenizerError("texts must be an iterable of strings, not a single string")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 0:
        raise TokenizerError(f"vocab_size must be a positive int, got {vocab_size!r}")
    out = Path(out_path)
    # Checked up front: an exception raised inside the iterator would reach us re-wrapped by
    # the C++ trainer as an opaque RuntimeError.
    corpus = list(_checked(texts))
    if not corpus:
        raise TokenizerError("texts is empty: nothing to train on")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            hard_vocab_limit=hard_vocab_limit,
            character_coverage=character_coverage,
            byte_fallback=True,
            split_digits=True,
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            allow_whitespace_only_pieces=True,
            max_sentencepiece_length=max_piece_length,
            max_sentence_length=_MAX_TEXT_BYTES,
            # 0 means "use every sentence": no random sampling, hence deterministic output.
            input_sentence_size=0,
            num_threads=num_threads,
            pad_id=0,
            eos_id=1,
            bos_id=2,
            unk_id=3,
            pad_piece="<pad>",
            eos_piece="<eos>",
            bos_piece="<bos>",
            unk_piece="<unk>",
            user_defined_symbols=list(SPECIAL_TOKENS),
            minloglevel=2,
        )
    except RuntimeError as exc:
        # SentencePiece reports bad settings (e.g. a vocab too small for the byte pieces, or
        # too large for the corpus) as a RuntimeError carrying its internal check text.
        hint = ""
        if "Vocabulary size too high" in str(exc):
            hint = " (use a larger corpus, a smaller vocab_size, or hard_vocab_limit=False)"
        raise TokenizerError(f"SentencePiece training failed: {exc}{hint}") from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.getvalue())
    return out


def _checked(texts: Iterable[str]) -> Iterator[str]:
    """Yield ``texts``, rejecting non-strings before they reach the C++ trainer."""
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TokenizerError(f"texts[{index}] is {type(text).__name__}, expected str")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TokenizerError(
                f"texts[{index}] is not valid Unicode ({exc.reason} at index {exc.start})"
            ) from None
        if text:
            yield text
