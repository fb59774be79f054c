"""The one prompt builder: exact ids, fitting by content-chosen cuts, linear work. Checked on a
real source file (the standard library's argparse) with the shipped model's tokenizer."""

import argparse
from pathlib import Path

import pytest

from codegemma.chat import chat_prompt
from codegemma.default_model import default_model_dir
from codegemma.errors import PromptTooLongError
from codegemma.fim import fim_prompt
from codegemma.prompts import (
    STABLE_MAX_FRACTION,
    PromptBuilder,
    anchor_offsets,
    stable_prefix_start,
)
from codegemma.tokenizer import Tokenizer

SOURCE = Path(argparse.__file__).read_text()


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_dir(default_model_dir())


def typing_positions(start_line=1200, lines=3):
    """Cursor offsets while re-typing `lines` lines of SOURCE, one request every 4 keystrokes."""
    begin = sum(len(line) for line in SOURCE.splitlines(keepends=True)[:start_line])
    end = begin + sum(
        len(line) for line in SOURCE.splitlines(keepends=True)[start_line : start_line + lines]
    )
    return list(range(begin, end, 4))


def test_anchors_are_line_starts_chosen_by_content():
    text = b"partial line\nalpha\n\nbeta\ngamma\n"
    offsets = anchor_offsets(text)
    assert all(text[o - 1 : o] == b"\n" for o in offsets)
    assert text.index(b"\n\n") + 1 in offsets  # a blank line is always an anchor
    assert [o + 3 for o in offsets] == anchor_offsets(b"xyz" + text)  # content, not position
    assert 0 not in anchor_offsets(b"\n\nabc")


def test_a_sliding_window_keeps_a_stable_start():
    starts = []
    for cursor in typing_positions():
        window_start = max(0, cursor - 3000)
        prefix = SOURCE[window_start:cursor].encode()
        cut = stable_prefix_start(prefix)
        assert cut <= len(prefix) * STABLE_MAX_FRACTION
        assert cut == 0 or prefix[cut - 1 : cut] == b"\n"
        starts.append(window_start + cut)
    changes = sum(a != b for a, b in zip(starts, starts[1:], strict=False))
    assert len(starts) > 20 and changes <= 2
    # Without the anchor, the start would move on every request.
    assert len({max(0, c - 3000) for c in typing_positions()}) == len(starts)


def test_anchor_changes_are_rare_over_a_long_slide():
    starts = set()
    for cursor in range(40_000, 48_000, 4):
        starts.add(cursor - 3000 + stable_prefix_start(SOURCE[cursor - 3000 : cursor].encode()))
    lines_passed = SOURCE[40_000 - 3000 : 48_000 - 3000].count("\n")
    assert len(starts) < lines_passed / 3


def test_short_prefixes_are_kept_whole():
    assert stable_prefix_start(b"x = 1\n" * 100) == 0


@pytest.mark.parametrize("mode", ["psm", "spm"])
def test_a_prompt_that_fits_is_exactly_the_tokenized_text(tokenizer, mode):
    builder = PromptBuilder(tokenizer, 8192)
    files = [("a/util.py", SOURCE[:700]), ("b.py", "x = 'ünïcode ✅'\n")]
    prefix, suffix = SOURCE[5000:6000], SOURCE[6000:6300]
    prompt = builder.fim(prefix, suffix, files=files, path="main.py", mode=mode)
    text = fim_prompt(prefix, suffix, mode=mode, files=files, path="main.py")
    assert prompt.ids == tokenizer.encode(text)
    assert prompt.truncated_tokens == 0 and prompt.dropped_files == 0


def kept_parts(tokenizer, ids):
    text = tokenizer.decode(ids[1:])
    suffix, rest = text.split("<|fim_suffix|>")[1].split("<|fim_prefix|>")
    return rest.removesuffix("<|fim_middle|>"), suffix


@pytest.mark.parametrize("budget", [500, 1500])
def test_fitting_cuts_at_anchors_that_move_rarely(tokenizer, budget):
    builder = PromptBuilder(tokenizer, budget + 256)  # leaves `budget` tokens for the prompt
    suffix = SOURCE[60_000:61_000]
    cuts = []
    for cursor in range(50_000, 50_400, 4):
        prefix = SOURCE[45_000:cursor]  # a fixed-start client: the prefix only grows
        prompt = builder.fim(prefix, suffix, mode="spm")
        whole = len(tokenizer.encode(fim_prompt(prefix, suffix, mode="spm")))
        assert len(prompt.ids) <= budget
        assert prompt.truncated_tokens == whole - len(prompt.ids)
        kept_prefix, kept_suffix = kept_parts(tokenizer, prompt.ids)
        assert prefix.endswith(kept_prefix) and suffix.startswith(kept_suffix)
        assert kept_prefix.startswith(("\n", " ")) or prefix[-len(kept_prefix) - 1] == "\n"
        cuts.append(len(prefix) - len(kept_prefix))
    assert len(set(cuts)) <= 4  # 100 requests, a handful of cut points
    assert all(b >= a for a, b in zip(cuts, cuts[1:], strict=False))  # the cut only moves on


def test_a_long_suffix_keeps_whole_lines_up_to_a_quarter(tokenizer):
    builder = PromptBuilder(tokenizer, 1256)
    prompt = builder.fim("x = 1\n", SOURCE[:20_000], mode="spm")
    _, kept_suffix = kept_parts(tokenizer, prompt.ids)
    assert 0 < len(tokenizer.encode(kept_suffix, add_bos=False)) <= 250
    assert SOURCE.startswith(kept_suffix) and kept_suffix.endswith("\n")


def test_building_is_linear_in_the_input(tokenizer, monkeypatch):
    # 3000 lines either side of the cursor: each piece is tokenized once, however much is cut
    calls = []
    real = tokenizer.encode
    monkeypatch.setattr(tokenizer, "encode", lambda text, **kw: calls.append(1) or real(text, **kw))
    lines = SOURCE.splitlines(keepends=True)
    prefix, suffix = "".join(lines[:3000]), "".join(lines[3000:6000])
    prompt = PromptBuilder(tokenizer, 2048).fim(prefix, suffix, files=[("u.py", SOURCE[:3000])])
    assert len(prompt.ids) <= 2048 - 256 and prompt.truncated_tokens > 10_000
    assert len(calls) <= 4  # prefix, suffix, one context file, and BOS-only bookkeeping


def test_context_files_are_kept_nearest_first_and_the_rest_reported(tokenizer):
    builder = PromptBuilder(tokenizer, 1024)
    files = [(f"f{i}.py", SOURCE[i * 2000 : i * 2000 + 1200]) for i in range(6)]
    prompt = builder.fim("def f():\n", "\n", files=files, reserve=256)
    text = tokenizer.decode(prompt.ids)
    kept = [path for path, _ in files if f"{path}\n" in text]
    assert 0 < len(kept) < len(files) and kept == [p for p, _ in files[-len(kept) :]]
    assert prompt.dropped_files == len(files) - len(kept)
    dropped_tokens = sum(
        len(tokenizer.encode(f"{p}\n{c}", add_bos=False)) for p, c in files[: prompt.dropped_files]
    )
    assert prompt.dropped_file_tokens == dropped_tokens
    assert len(prompt.ids) <= 1024 - 256
    with pytest.raises(PromptTooLongError, match="context files do not fit"):
        builder.fim("def f():\n", "\n", files=files, reserve=256, truncate=False)


def test_plain_prompts_are_refused_or_keep_their_end(tokenizer):
    builder = PromptBuilder(tokenizer, 300)
    with pytest.raises(PromptTooLongError, match="truncat"):
        builder.text(SOURCE[:5000], reserve=50)
    prompt = builder.text(SOURCE[:5000], reserve=50, truncate=True)
    whole = tokenizer.encode(SOURCE[:5000])
    assert len(prompt.ids) == 250 and prompt.ids[0] == tokenizer.bos_id
    assert prompt.ids[1:] == whole[-249:] and prompt.truncated_tokens == len(whole) - 250


def test_long_conversations_lose_their_oldest_exchanges(tokenizer):
    builder = PromptBuilder(tokenizer, 400)
    messages = []
    for i in range(8):
        messages += [
            {"role": "user", "content": f"question {i}: " + SOURCE[i * 300 : i * 300 + 250]},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    messages.append({"role": "user", "content": "and the last question?"})
    prompt = builder.chat(messages, reserve=100, truncate=True)
    assert len(prompt.ids) <= 300 and prompt.truncated_tokens > 0
    first_kept = next(i for i in range(8) if f"question {i}:" in tokenizer.decode(prompt.ids))
    kept = messages[2 * first_kept :]
    assert prompt.ids == tokenizer.encode(chat_prompt(kept))
    with pytest.raises(PromptTooLongError):
        builder.chat(messages, reserve=100)
