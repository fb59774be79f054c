"""StreamingDetokenizer: streamed text equals decode(), whole characters only, bounded hold."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from codegemma.detokenizer import StreamingDetokenizer
from codegemma.tokenizer import Tokenizer, TokenizerError

REPLACEMENT = "\ufffd"


@pytest.fixture(scope="module", params=["model", "json"])
def tokenizer(request, tiny_tokenizer_dir: Path, tiny_tokenizer_json_dir: Path) -> Tokenizer:
    directory = tiny_tokenizer_dir if request.param == "model" else tiny_tokenizer_json_dir
    return Tokenizer.from_dir(directory)


def _byte_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """Byte-fallback ids spelling ``text``, one UTF-8 byte per token (looked up by text)."""
    ids = [tokenizer.token_id(f"<0x{byte:02X}>") for byte in text.encode("utf-8")]
    assert None not in ids
    return ids  # type: ignore[return-value]


def _stream(tokenizer: Tokenizer, ids: list[int], **options) -> list[str]:
    detokenizer = StreamingDetokenizer(tokenizer, **options)
    return [detokenizer.push(token) for token in ids] + [detokenizer.flush()]


@pytest.mark.parametrize("skip", [False, True])
def test_stream_equals_decode_for_random_ids(tokenizer, skip):
    high_bytes = [tokenizer.token_id(f"<0x{b:02X}>") for b in range(0x80, 0x100)]
    specials = sorted(tokenizer.special_ids)
    rng = random.Random(2024)
    for _ in range(2000):
        ids = []
        for _ in range(rng.randint(0, 40)):
            roll = rng.random()
            if roll < 0.55:
                ids.append(rng.choice(high_bytes))
            elif roll < 0.65:
                ids.append(rng.choice(specials))
            else:
                ids.append(rng.randrange(tokenizer.vocab_size))
        streamed = "".join(_stream(tokenizer, ids, skip_special_tokens=skip))
        assert streamed == tokenizer.decode(ids, skip_special_tokens=skip), ids


TEXTS = [
    "def f(x):\r\n\treturn x  # Привет 🎉\r\n",
    "こんにちは 世界 👩‍💻 🇰🇷 👍🏽 and 한국어",
    "   leading spaces then ∑∫√ then\ttabs\t\t",
    # (U+2581 is left out: like a space it decodes to " ", so it does not round-trip.)
    "e\u0301 combining, ﬁ ligature, ∅",
]


@pytest.mark.parametrize("text", TEXTS)
def test_stream_of_encoded_text_is_the_text(tokenizer, text):
    pushes = _stream(tokenizer, tokenizer.encode(text, add_bos=False))
    assert "".join(pushes) == text
    assert not any(REPLACEMENT in piece for piece in pushes)


@pytest.mark.parametrize("char", ["é", "中", "한", "🎉", "𝔘"])
def test_multibyte_character_split_into_byte_tokens(tokenizer, char):
    x = tokenizer.token_id("x")
    ids = [
        x,
        *_byte_ids(tokenizer, char),
        x,
        *_byte_ids(tokenizer, char),
        *_byte_ids(tokenizer, char),
    ]
    pushes = _stream(tokenizer, ids)
    assert "".join(pushes) == f"x{char}x{char}{char}"
    assert not any(REPLACEMENT in piece for piece in pushes)
    # The character is out as soon as the next ordinary token shows it ended the byte run.
    assert "".join(pushes[: 2 + len(char.encode())]) == f"x{char}x"


def test_byte_run_interrupted_by_skipped_token_joins_up(tokenizer):
    e4, b8, ad = _byte_ids(tokenizer, "中")
    ids = [e4, tokenizer.eos_id, b8, ad]
    assert "".join(_stream(tokenizer, ids, skip_special_tokens=True)) == "中"
    assert "".join(_stream(tokenizer, ids)) == REPLACEMENT + "<eos>" + REPLACEMENT * 2


@pytest.mark.parametrize("piece", ["\u2581", "\u2581" * 4, "\u2581" * 8])
def test_stream_starting_with_a_space_piece(tokenizer, piece):
    ids = [tokenizer.token_id(piece), tokenizer.token_id("return")]
    assert None not in ids
    pushes = _stream(tokenizer, ids)
    spaces = " " * len(piece)
    assert pushes[0] == spaces
    assert "".join(pushes) == spaces + "return" == tokenizer.decode(ids)


def test_invalid_bytes_do_not_stall(tokenizer):
    lead = _byte_ids(tokenizer, "中")[0]
    continuation = tokenizer.token_id("<0x80>")
    stray = tokenizer.token_id("<0xFF>")
    detokenizer = StreamingDetokenizer(tokenizer)
    assert detokenizer.push(lead) == ""  # could still become a character
    assert detokenizer.push(stray) == REPLACEMENT * 2  # now it cannot: out at once
    for _ in range(500):
        assert detokenizer.push(continuation) == REPLACEMENT
    assert detokenizer.flush() == ""


def test_long_valid_byte_run_is_released_in_bounded_chunks(tokenizer):
    text = "中é🎉" * 60
    ids = _byte_ids(tokenizer, text)
    pushes = _stream(tokenizer, ids, max_held_bytes=16)
    assert "".join(pushes) == text == tokenizer.decode(ids)
    held = longest = 0
    for piece in pushes[:-1]:
        held = held + 1 if piece == "" else 0
        longest = max(longest, held)
    assert longest <= 16 + 3


def test_push_cost_does_not_grow_with_stream_length(tokenizer):
    rng = random.Random(5)
    ids = [rng.randrange(tokenizer.vocab_size) for _ in range(60_000)]
    detokenizer = StreamingDetokenizer(tokenizer)
    timings = []
    for start in range(0, len(ids), 20_000):
        began = time.perf_counter()
        for token in ids[start : start + 20_000]:
            detokenizer.push(token)
        timings.append(time.perf_counter() - began)
    # Re-decoding a growing history would make the last chunk several times slower.
    assert timings[-1] < 4 * timings[0] + 0.05


def test_flush_then_continue(tokenizer):
    e4, b8, ad = _byte_ids(tokenizer, "中")
    detokenizer = StreamingDetokenizer(tokenizer)
    assert detokenizer.push(e4) == ""
    assert detokenizer.flush() == REPLACEMENT  # a truncated character at the end of the stream
    assert [detokenizer.push(t) for t in (e4, b8, ad)] == ["", "", ""]
    assert detokenizer.flush() == "中"
    assert detokenizer.flush() == ""


def test_bad_ids_and_options(tokenizer):
    detokenizer = StreamingDetokenizer(tokenizer)
    with pytest.raises(TokenizerError):
        detokenizer.push(tokenizer.vocab_size)
    with pytest.raises(TokenizerError):
        detokenizer.push("x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_held_bytes"):
        StreamingDetokenizer(tokenizer, max_held_bytes=3)
