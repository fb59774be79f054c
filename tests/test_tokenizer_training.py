"""train_tokenizer: Gemma's SentencePiece settings, checked with SentencePiece itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from codegemma.tokenizer import TokenizerError
from codegemma.tokenizer_training import SPECIAL_TOKENS, train_tokenizer

Piece = model_pb2.ModelProto.SentencePiece


@pytest.fixture(scope="module")
def proto(tiny_tokenizer_dir: Path) -> model_pb2.ModelProto:
    model = model_pb2.ModelProto()
    model.ParseFromString((tiny_tokenizer_dir / "tokenizer.model").read_bytes())
    return model


@pytest.fixture(scope="module")
def processor(tiny_tokenizer_dir: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(tiny_tokenizer_dir / "tokenizer.model"))


def test_special_tokens_constant_is_gemmas_order():
    assert SPECIAL_TOKENS == (
        "<mask>",
        "<|fim_prefix|>",
        "<|fim_middle|>",
        "<|fim_suffix|>",
        "<|file_separator|>",
        "<start_of_turn>",
        "<end_of_turn>",
    )


def test_meta_and_special_pieces(proto):
    pieces = [(p.piece, p.type) for p in proto.pieces[: 4 + len(SPECIAL_TOKENS)]]
    assert pieces[:4] == [
        ("<pad>", Piece.CONTROL),
        ("<eos>", Piece.CONTROL),
        ("<bos>", Piece.CONTROL),
        ("<unk>", Piece.UNKNOWN),
    ]
    assert pieces[4:] == [(name, Piece.USER_DEFINED) for name in SPECIAL_TOKENS]
    spec = proto.trainer_spec
    assert (spec.pad_id, spec.eos_id, spec.bos_id, spec.unk_id) == (0, 1, 2, 3)


def test_trainer_and_normalizer_settings(proto):
    spec = proto.trainer_spec
    assert spec.model_type == model_pb2.TrainerSpec.BPE
    assert spec.vocab_size == len(proto.pieces)
    assert spec.byte_fallback
    assert spec.split_digits
    assert spec.allow_whitespace_only_pieces
    assert spec.max_sentencepiece_length >= 16
    normalizer = proto.normalizer_spec
    assert normalizer.name == "identity"
    assert not normalizer.add_dummy_prefix
    assert not normalizer.remove_extra_whitespaces
    assert sum(p.type == Piece.BYTE for p in proto.pieces) == 256


def test_byte_fallback_covers_unseen_characters(processor):
    text = "Жёлтый ひらがな 🦀"  # none of these characters is in the training corpus
    pieces = processor.encode_as_pieces(text)
    assert "<0xD0>" in pieces and "<0xF0>" in pieces
    assert processor.unk_id() not in processor.encode(text)
    assert processor.decode(processor.encode(text)) == text


def test_digits_are_split(processor):
    assert processor.encode_as_pieces("1234567890") == list("1234567890")
    # "1024" and "2024" occur in the corpus, yet never become pieces.
    assert not any(
        sum(c.isdigit() for c in processor.id_to_piece(i)) > 1
        for i in range(processor.get_piece_size())
        if not processor.is_byte(i)
    )


def test_no_dummy_prefix(processor):
    assert processor.encode("x") != processor.encode(" x")
    assert processor.encode_as_pieces("return")[0] == "return"
    assert processor.encode_as_pieces(" return")[0].startswith("\u2581")


def test_whitespace_is_kept_and_gets_pieces(processor):
    text = "a  b\t\t\tc\r\n\n        d   "
    assert processor.decode(processor.encode(text)) == text
    vocab = {processor.id_to_piece(i) for i in range(processor.get_piece_size())}
    # Indentation runs from the corpus are whole pieces; so are tab runs and CRLF.
    assert {"\u2581" * 4, "\u2581" * 8, "\t\t", "\r\n"} <= vocab
    assert processor.encode_as_pieces(" " * 8) == ["\u2581" * 8]


def test_special_tokens_are_matched_inside_text(processor):
    for name in SPECIAL_TOKENS:
        ids = processor.encode(f"a{name}b")
        assert processor.piece_to_id(name) in ids


def test_training_is_deterministic(tmp_path, tiny_tokenizer_corpus):
    first = train_tokenizer(tiny_tokenizer_corpus, tmp_path / "a.model", 400)
    second = train_tokenizer(iter(tiny_tokenizer_corpus), tmp_path / "b.model", 400)
    assert first.read_bytes() == second.read_bytes()


def test_returns_path_and_creates_parents(tmp_path, tiny_tokenizer_corpus):
    out = train_tokenizer(tiny_tokenizer_corpus, str(tmp_path / "x" / "y" / "t.model"), 400)
    assert out == tmp_path / "x" / "y" / "t.model"
    assert spm.SentencePieceProcessor(model_file=str(out)).get_piece_size() == 400


def test_soft_vocab_limit_allows_a_small_corpus(tmp_path):
    texts = ["hello world\n"] * 5
    with pytest.raises(TokenizerError, match="hard_vocab_limit"):
        train_tokenizer(texts, tmp_path / "t.model", 1000)
    out = train_tokenizer(texts, tmp_path / "t.model", 1000, hard_vocab_limit=False)
    size = spm.SentencePieceProcessor(model_file=str(out)).get_piece_size()
    assert 4 + len(SPECIAL_TOKENS) + 256 < size < 1000


def test_vocab_too_small_for_byte_pieces(tmp_path, tiny_tokenizer_corpus):
    with pytest.raises(TokenizerError, match="training failed"):
        train_tokenizer(tiny_tokenizer_corpus, tmp_path / "t.model", 100)


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ("a single string", "not a single string"),
        (["fine", 3], r"texts\[1\] is int"),
        (["bad \ud800 surrogate"], "not valid Unicode"),
        ([], "empty"),
        (["", ""], "empty"),
    ],
)
def test_bad_texts(tmp_path, texts, message):
    with pytest.raises(TokenizerError, match=message):
        train_tokenizer(texts, tmp_path / "t.model", 300)
    assert not (tmp_path / "t.model").exists()


@pytest.mark.parametrize("size", [0, -5, 1.5, True])
def test_bad_vocab_size(tmp_path, size):
    with pytest.raises(TokenizerError, match="vocab_size"):
        train_tokenizer(["abc"], tmp_path / "t.model", size)
