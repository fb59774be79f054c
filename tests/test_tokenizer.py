"""Tokenizer: parity with transformers' GemmaTokenizer, special-token lookup, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from codegemma.tokenizer import Tokenizer, TokenizerError

transformers = pytest.importorskip("transformers")

FIM_AND_TURN_TOKENS = (
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|file_separator|>",
    "<start_of_turn>",
    "<end_of_turn>",
)

# Held out from training. Cyrillic, kana, Greek, Arabic, Devanagari, most emoji and math
# symbols never occur in the training corpus, so they need byte fallback.
HELD_OUT = [
    "",
    " ",
    "x",
    " x",
    "  two leading spaces",
    "trailing spaces   ",
    "\n",
    "\n\n\n",
    "\t",
    "\tfoo\t\tbar",
    "def f(x):\r\n\treturn x\r\n",
    "\r\r\n\n\r",
    "class A:\n" + " " * 40 + "deep = True\n" + " " * 33 + "odd\n",
    "if a:\n\t\t\t\t\t\t\t\t\t\tb = 1  # ten tabs\n",
    "Привет, мир! // Cyrillic",
    "こんにちは世界 and カタカナ",
    "αβγ ∑∫√ ≤≥ λx. x",
    "مرحبا بالعالم",
    "नमस्ते",
    "👩‍💻 🇰🇷 👍🏽 🎉 🚀 🦀",
    "数字 1234567890 and 3.14159e-10",
    "한국어 주석 // 注释 café naïve Ærøskøbing",
    "ｆｕｌｌｗｉｄｔｈ and ﬁ ligature and e\u0301 combining",
    "\u2581literal lower one eighth block\u2581",
    "nbsp\u00a0and ideographic\u3000space and bom\ufeff",
    "control \x00\x01\x1f\x7f chars",
    "<eos>",
    "a<eos>b",
    "<bos><bos>x<pad><unk><mask>",
    "<<eos>>",
    "<eos",
    "eos>",
    "<|fim_prefix|",
    "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n    return c<|fim_middle|>",
    "<start_of_turn>user\nWrite a sort<end_of_turn>\n<start_of_turn>model\n",
    "file_a.py<|file_separator|>file_b.py",
    "  <|fim_middle|>  ",
    "<|fim_prefix|><|fim_prefix|><|fim_suffix|>",
    "for (let i = 0; i < n; i++) { sum += arr[i] * 2; }  // 计算",
    "x" * 300,
    " " * 100,
]


def _random_texts(count: int, seed: int) -> list[str]:
    # Short strings glued together from fragments that stress the tricky paths: whitespace
    # runs, special-token text (whole and broken), byte fallback and mixed scripts.
    fragments = list("abcxyz_(){}[];:.,'\"0123456789+-*/=<>|#") + [
        " ",
        "  ",
        "    ",
        "\t",
        "\n",
        "\r\n",
        "\r",
        "return",
        "self",
        "value",
        "é",
        "数",
        "숫자",
        "🎉",
        "Ж",
        "ひ",
        "😀",
        "\u2581",
        "<eos>",
        "<bos>",
        "<pad>",
        "<unk>",
        "<mask>",
        "<|fim_prefix|>",
        "<|fim_middle|>",
        "<|fim_suffix|>",
        "<|file_separator|>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<|",
        "|>",
        "_of_",
    ]
    rng = random.Random(seed)
    return ["".join(rng.choices(fragments, k=rng.randint(0, 24))) for _ in range(count)]


@pytest.fixture(scope="module", params=["model", "json"])
def pair(request, tiny_tokenizer_dir: Path, tiny_tokenizer_json_dir: Path):
    """(our Tokenizer, transformers reference) for one file type."""
    if request.param == "model":
        ours = Tokenizer.from_dir(tiny_tokenizer_dir)
        # Loaded from the bare .model, transformers only adds BOS when told to; the real
        # CodeGemma tokenizer_config.json says add_bos_token: true.
        reference = transformers.GemmaTokenizer.from_pretrained(
            tiny_tokenizer_dir, add_bos_token=True
        )
        assert ours.path.name == "tokenizer.model"
    else:
        ours = Tokenizer.from_dir(tiny_tokenizer_json_dir)
        reference = transformers.AutoTokenizer.from_pretrained(tiny_tokenizer_json_dir)
        assert ours.path.name == "tokenizer.json"
    return ours, reference


def test_held_out_corpus_exercises_byte_fallback(pair):
    ours, _ = pair
    ids = ours.encode("".join(HELD_OUT))
    assert any(ours.byte_value(i) is not None for i in ids)


@pytest.mark.parity
@pytest.mark.parametrize("text", HELD_OUT)
def test_encode_matches_transformers(pair, text):
    ours, reference = pair
    expected = reference(text)["input_ids"]
    assert expected[:1] == [reference.bos_token_id]
    assert ours.encode(text) == expected
    assert ours.encode(text, add_bos=False) == expected[1:]


@pytest.mark.parity
def test_encode_matches_transformers_on_random_text(pair):
    ours, reference = pair
    for text in _random_texts(1500, seed=1234):
        assert ours.encode(text) == reference(text)["input_ids"], repr(text)


@pytest.mark.parity
@pytest.mark.parametrize("skip", [False, True])
def test_decode_matches_transformers(pair, skip):
    ours, reference = pair
    for text in HELD_OUT + _random_texts(300, seed=99):
        ids = reference(text)["input_ids"]
        assert ours.decode(ids, skip_special_tokens=skip) == reference.decode(
            ids, skip_special_tokens=skip
        ), repr(text)


@pytest.mark.parity
@pytest.mark.parametrize("skip", [False, True])
def test_decode_matches_transformers_on_random_ids(pair, skip):
    # Random ids, biased towards byte-fallback and special tokens: invalid and truncated
    # UTF-8, runs interrupted by control tokens, and so on.
    ours, reference = pair
    size = len(reference)
    high_bytes = [reference.convert_tokens_to_ids(f"<0x{b:02X}>") for b in range(0x80, 0x100)]
    rng = random.Random(7)
    for _ in range(1500):
        ids = []
        for _ in range(rng.randint(0, 24)):
            roll = rng.random()
            if roll < 0.5:
                ids.append(rng.choice(high_bytes))
            elif roll < 0.6:
                ids.append(rng.randrange(11))  # meta and user-defined tokens
            else:
                ids.append(rng.randrange(size))
        assert ours.decode(ids, skip_special_tokens=skip) == reference.decode(
            ids, skip_special_tokens=skip
        ), ids


@pytest.mark.parity
def test_ids_and_vocab_size_match_transformers(pair):
    ours, reference = pair
    assert ours.vocab_size == len(reference)
    assert ours.bos_id == reference.bos_token_id
    assert ours.eos_id == reference.eos_token_id
    assert ours.pad_id == reference.pad_token_id
    for index in range(ours.vocab_size):
        assert ours.id_to_piece(index) == reference.convert_ids_to_tokens(index)


@pytest.mark.parity
def test_special_ids_are_control_and_user_defined(pair):
    ours, reference = pair
    added = {index for index in reference.added_tokens_decoder}
    assert ours.special_ids == added
    names = {ours.id_to_piece(i) for i in ours.special_ids}
    assert names == {"<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *FIM_AND_TURN_TOKENS}


@pytest.mark.parity
@pytest.mark.parametrize("name", FIM_AND_TURN_TOKENS)
def test_fim_and_turn_tokens_found_by_text_and_kept_whole(pair, name):
    ours, reference = pair
    token = ours.token_id(name)
    assert token is not None
    assert token == reference.convert_tokens_to_ids(name)
    assert ours.id_to_piece(token) == name
    assert token in ours.special_ids
    ids = ours.encode(f"x = 1{name}y = 2", add_bos=False)
    assert ids.count(token) == 1
    assert ours.decode(ids) == f"x = 1{name}y = 2"
    # Not something transformers drops as "special": FIM and turn tokens survive skipping.
    assert name in ours.decode(ids, skip_special_tokens=True)


def test_token_id_lookup_by_text(pair):
    ours, _ = pair
    assert ours.token_id("<bos>") == ours.bos_id
    assert ours.token_id("<0x41>") is not None
    assert ours.token_id("definitely not a piece") is None
    assert ours.token_id("") is None


def test_control_tokens_in_text_are_parsed(pair):
    ours, _ = pair
    assert ours.encode("<eos>", add_bos=False) == [ours.eos_id]
    assert ours.encode("a<bos>", add_bos=False)[-1] == ours.bos_id
    assert ours.decode([ours.bos_id, ours.eos_id]) == "<bos><eos>"
    assert ours.decode([ours.bos_id, ours.eos_id], skip_special_tokens=True) == ""


def test_encode_adds_bos_but_never_eos(pair):
    ours, _ = pair
    assert ours.encode("") == [ours.bos_id]
    assert ours.encode("", add_bos=False) == []
    assert ours.eos_id not in ours.encode("some text")


def test_decode_accepts_tensors_and_numpy(pair):
    ours, _ = pair
    import numpy as np
    import torch

    ids = ours.encode("print('héllo 🎉')")
    assert ours.decode(torch.tensor(ids)) == ours.decode(ids)
    assert ours.decode(np.array(ids)) == ours.decode(ids)
    assert ours.decode(ids[1]) == ours.decode(ids[1:2])


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("bad", [None, 12, b"bytes", ["list"]])
def test_encode_rejects_non_strings(pair, bad):
    ours, _ = pair
    with pytest.raises(TokenizerError, match="must be str"):
        ours.encode(bad)


@pytest.mark.parametrize("bad", ["\ud800", "ok\udfffok", "\ud83d\ude00 pair as surrogates"])
def test_encode_rejects_lone_surrogates(pair, bad):
    ours, _ = pair
    with pytest.raises(TokenizerError, match="surrogate"):
        ours.encode(bad)


def test_decode_rejects_bad_ids(pair):
    ours, _ = pair
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        ours.decode([ours.vocab_size])
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        ours.decode([-1])
    with pytest.raises(TokenizerError, match="integers"):
        ours.decode(["a"])
    with pytest.raises(TokenizerError):
        ours.decode("abc")
    with pytest.raises(TokenizerError):
        ours.id_to_piece(10**9)


def test_tokenizer_error_is_a_value_error():
    assert issubclass(TokenizerError, ValueError)


def test_from_dir_prefers_model_file(tiny_tokenizer_dir, tiny_tokenizer_json_dir, tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(
        (tiny_tokenizer_dir / "tokenizer.model").read_bytes()
    )
    (tmp_path / "tokenizer.json").write_bytes(
        (tiny_tokenizer_json_dir / "tokenizer.json").read_bytes()
    )
    assert Tokenizer.from_dir(tmp_path).path == tmp_path / "tokenizer.model"
    assert Tokenizer.from_file(tmp_path / "tokenizer.json").path.name == "tokenizer.json"


def test_from_dir_without_tokenizer_lists_what_was_looked_for(tmp_path):
    with pytest.raises(TokenizerError) as info:
        Tokenizer.from_dir(tmp_path)
    message = str(info.value)
    assert "tokenizer.model" in message and "tokenizer.json" in message
    assert str(tmp_path) in message


def test_missing_paths(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.from_dir(tmp_path / "nope")
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.from_file(tmp_path / "tokenizer.model")


@pytest.mark.parametrize("payload", [b"", b"not a protobuf \xff\xfe" * 10, b"\x0a\x05abc"])
def test_corrupt_model_file(tmp_path, payload):
    (tmp_path / "tokenizer.model").write_bytes(payload)
    with pytest.raises(TokenizerError, match="SentencePiece"):
        Tokenizer.from_dir(tmp_path)


def test_truncated_model_file(tiny_tokenizer_dir, tmp_path):
    data = (tiny_tokenizer_dir / "tokenizer.model").read_bytes()
    (tmp_path / "tokenizer.model").write_bytes(data[: len(data) // 2])
    with pytest.raises(TokenizerError):
        Tokenizer.from_dir(tmp_path)


@pytest.mark.parametrize("payload", ["", "{not json", '{"model": 3}'])
def test_corrupt_json_file(tmp_path, payload):
    (tmp_path / "tokenizer.json").write_text(payload)
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_non_gemma_json_is_rejected(tiny_tokenizer_json_dir, tmp_path):
    data = json.loads((tiny_tokenizer_json_dir / "tokenizer.json").read_text(encoding="utf-8"))
    data["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerError, match="not a Gemma tokenizer"):
        Tokenizer.from_dir(tmp_path)
