"""The tokenizer rebuilt from GGUF metadata tokenizes exactly like the original SentencePiece
model, for vocabularies written our way and the way llama.cpp's converter writes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from codegemma.gguf.reader import GGUFError
from codegemma.gguf.tokenizer import (
    CONTROL,
    NORMAL,
    UNUSED,
    USER_DEFINED,
    proto_from_metadata,
    tokenizer_from_metadata,
    vocabulary_from_proto,
)
from codegemma.tokenizer import Tokenizer

SOURCE = Path("model.gguf")
_EXTRA_TEXTS = (
    "",
    "    four spaces, then\n\n\n\t\ttabs  and   runs" + " " * 40 + "end",
    "digits 1234567890 3.14159",
    "bytes: 🎉🦄☃ 漢字 ünïcödé",
    "<|fim_prefix|>def f(x):\n    <|fim_suffix|>\n    return y<|fim_middle|>",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "literal <eos> and <bos> and <mask> in text",
    "<|file_separator|>path/a.py\nx = 1",
)


@pytest.fixture(scope="module")
def original(tiny_tokenizer_dir: Path) -> model_pb2.ModelProto:
    """The tiny Gemma-style model plus a user-defined whitespace piece, as Gemma has them."""
    proto = model_pb2.ModelProto()
    proto.ParseFromString((tiny_tokenizer_dir / "tokenizer.model").read_bytes())
    proto.pieces.add(piece="\u2581" * 3, score=0.0, type=USER_DEFINED)
    proto.trainer_spec.vocab_size = len(proto.pieces)
    return proto


@pytest.fixture(scope="module")
def texts(tiny_tokenizer_corpus) -> list[str]:
    return [*tiny_tokenizer_corpus[:4], *_EXTRA_TEXTS]


def _metadata(tokens, scores, types) -> dict:
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": list(tokens),
        "tokenizer.ggml.scores": np.asarray(scores, np.float32),
        "tokenizer.ggml.token_type": np.asarray(types, np.int32),
    }


def _as_llama_cpp_writes_it(proto: model_pb2.ModelProto, rows: int) -> dict:
    """The vocabulary as llama.cpp's convert_hf_to_gguf.py builds it from tokenizer.model plus
    a tokenizer_config.json listing some added tokens: SentencePiece's own types except that
    USER_DEFINED becomes NORMAL; listed tokens become CONTROL if they look special, else
    USER_DEFINED with "▁" turned into spaces, both scored -1000; [PAD<id>] fill to `rows`."""
    processor = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    tokens, scores, types = [], [], []
    for i in range(processor.vocab_size()):
        kind = NORMAL
        if processor.IsUnknown(i):
            kind = 2
        elif processor.IsControl(i):
            kind = CONTROL
        elif processor.IsUnused(i):
            kind = UNUSED
        elif processor.IsByte(i):
            kind = 6
        tokens.append(processor.IdToPiece(i))
        scores.append(processor.GetScore(i))
        types.append(kind)
    listed = {"<|fim_prefix|>": CONTROL, "<|fim_suffix|>": CONTROL, "\u2581" * 3: USER_DEFINED}
    for text, kind in listed.items():
        i = tokens.index(text)
        tokens[i], scores[i], types[i] = text.replace("\u2581", " "), -1000.0, kind
    for i in range(len(tokens), rows):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(UNUSED)
    return _metadata(tokens, scores, types)


def _assert_same_tokenization(rebuilt: Tokenizer, reference: Tokenizer, texts) -> None:
    assert rebuilt.vocab_size == reference.vocab_size
    for text in texts:
        ids = reference.encode(text)
        assert rebuilt.encode(text) == ids, text[:60]
        assert rebuilt.decode(ids) == reference.decode(ids)
        assert rebuilt.decode(ids, skip_special_tokens=True) == reference.decode(
            ids, skip_special_tokens=True
        )
    for text in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<end_of_turn>"):
        assert rebuilt.token_id(text) == reference.token_id(text) is not None


def test_our_vocabulary_round_trips(original, texts):
    reference = Tokenizer.from_sentencepiece_bytes(original.SerializeToString(), "orig.model")
    vocabulary = vocabulary_from_proto(original, rows=len(original.pieces) + 9)
    assert vocabulary.tokens[-1] == f"[PAD{len(original.pieces) + 8}]"
    rebuilt, notes = tokenizer_from_metadata(
        _metadata(vocabulary.tokens, vocabulary.scores, vocabulary.types), SOURCE
    )
    _assert_same_tokenization(rebuilt, reference, texts)
    assert rebuilt.path == SOURCE
    assert any("9 trailing [PAD]" in note for note in notes)


def test_llama_cpp_vocabulary_is_repaired(original, texts):
    reference = Tokenizer.from_sentencepiece_bytes(original.SerializeToString(), "orig.model")
    metadata = _as_llama_cpp_writes_it(original, rows=len(original.pieces) + 3)
    rebuilt, notes = tokenizer_from_metadata(metadata, SOURCE)
    _assert_same_tokenization(rebuilt, reference, texts)
    proto, _ = proto_from_metadata(metadata, SOURCE)
    kinds = {p.piece: p.type for p in proto.pieces}
    assert kinds["<|fim_prefix|>"] == kinds["<|fim_middle|>"] == kinds["<mask>"] == USER_DEFINED
    assert kinds["\u2581" * 3] == USER_DEFINED
    assert len(proto.pieces) == len(original.pieces)
    assert [p.score for p in proto.pieces if p.type == NORMAL] == [
        p.score for p in original.pieces if p.type == NORMAL
    ]
    assert any("made user-defined again" in note for note in notes)
    assert any("spaces for" in note for note in notes)


def test_without_the_repair_tokenization_would_differ(original):
    # The check above is not vacuous: taken literally, llama.cpp's types tokenize differently.
    metadata = _as_llama_cpp_writes_it(original, rows=len(original.pieces))
    literal = model_pb2.ModelProto()
    literal.CopyFrom(original)
    for piece, kind in zip(literal.pieces, metadata["tokenizer.ggml.token_type"], strict=True):
        piece.type = int(kind)
    naive = Tokenizer.from_sentencepiece_bytes(literal.SerializeToString(), "naive.model")
    reference = Tokenizer.from_sentencepiece_bytes(original.SerializeToString(), "orig.model")
    text = "x<|fim_middle|>y<start_of_turn>"
    assert naive.encode(text) != reference.encode(text)


def test_gemma_normalizer_settings(original):
    vocabulary = vocabulary_from_proto(original, len(original.pieces))
    proto, _ = proto_from_metadata(
        _metadata(vocabulary.tokens, vocabulary.scores, vocabulary.types), SOURCE
    )
    spec = proto.normalizer_spec
    assert (spec.name, spec.add_dummy_prefix, spec.remove_extra_whitespaces) == (
        "identity",
        False,
        False,
    )
    trainer = proto.trainer_spec
    assert trainer.model_type == model_pb2.TrainerSpec.BPE
    assert trainer.byte_fallback and trainer.split_digits
    assert (trainer.pad_id, trainer.eos_id, trainer.bos_id, trainer.unk_id) == (0, 1, 2, 3)


def _vocabulary(original):
    v = vocabulary_from_proto(original, len(original.pieces))
    return v.tokens, v.scores, v.types


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update({"tokenizer.ggml.model": "gpt2"}), "'gpt2'; Gemma files use 'llama'"),
        (lambda m: m.pop("tokenizer.ggml.scores"), "missing tokenizer.ggml.scores"),
        (lambda m: m.pop("tokenizer.ggml.tokens"), "missing tokenizer.ggml.tokens"),
        (
            lambda m: m.update({"tokenizer.ggml.scores": np.zeros(3, np.float32)}),
            "as long as tokenizer.ggml.tokens",
        ),
        (lambda m: m["tokenizer.ggml.tokens"].__setitem__(20, "<bos>"), "appears twice"),
        (lambda m: m["tokenizer.ggml.token_type"].__setitem__(3, NORMAL), "one unknown token"),
        (lambda m: m["tokenizer.ggml.token_type"].__setitem__(30, 9), "unknown token type 9"),
        (lambda m: m["tokenizer.ggml.token_type"].__setitem__(20, NORMAL), "255 byte tokens"),
        (lambda m: m["tokenizer.ggml.tokens"].__setitem__(300, ""), "token 300 has empty text"),
    ],
)
def test_bad_vocabularies_are_named(original, change, message):
    metadata = _metadata(*_vocabulary(original))
    change(metadata)
    with pytest.raises(GGUFError, match=message):
        tokenizer_from_metadata(metadata, SOURCE)


def test_from_sentencepiece_bytes_equals_from_file(tiny_tokenizer_dir, texts):
    path = tiny_tokenizer_dir / "tokenizer.model"
    from_bytes = Tokenizer.from_sentencepiece_bytes(path.read_bytes(), path)
    from_file = Tokenizer.from_file(path)
    assert from_bytes.path == from_file.path
    for text in texts:
        assert from_bytes.encode(text) == from_file.encode(text)
