"""Stable cut points: as the user types, the start of a cut prompt moves rarely, so the cached
prefix stays useful. Checked on a real source file (the standard library's argparse)."""

import argparse
from pathlib import Path

import pytest

from codegemma.fim import fim_prompt
from codegemma.serving.truncation import (
    STABLE_MAX_FRACTION,
    anchor_offsets,
    fit_fim_stably,
    stable_prefix_start,
)

SOURCE = Path(argparse.__file__).read_text()


def typing_positions(start_line=1200, lines=3):
    """Cursor offsets while re-typing `lines` lines of SOURCE, one request every 4 keystrokes."""
    begin = sum(len(line) for line in SOURCE.splitlines(keepends=True)[:start_line])
    end = begin + sum(
        len(line) for line in SOURCE.splitlines(keepends=True)[start_line : start_line + lines]
    )
    return list(range(begin, end, 4))


def test_anchors_are_line_starts_chosen_by_content():
    text = "partial line\nalpha\n\nbeta\ngamma\n"
    offsets = anchor_offsets(text)
    assert all(text[o - 1] == "\n" for o in offsets)
    assert text.index("\n\n") + 1 in offsets  # a blank line is always an anchor
    shifted = "xyz" + text
    assert [o + 3 for o in offsets] == anchor_offsets(shifted)  # content, not position
    assert 0 not in anchor_offsets("\n\nabc")


def test_a_sliding_window_keeps_a_stable_start():
    starts = []
    for cursor in typing_positions():
        window_start = max(0, cursor - 3000)
        prefix = SOURCE[window_start:cursor]
        cut = stable_prefix_start(prefix)
        assert cut <= len(prefix) * STABLE_MAX_FRACTION
        assert cut == 0 or prefix[cut - 1] == "\n"
        starts.append(window_start + cut)
    changes = sum(a != b for a, b in zip(starts, starts[1:], strict=False))
    assert len(starts) > 20 and changes <= 2
    # Without the anchor, the start would move on every request.
    assert len({max(0, c - 3000) for c in typing_positions()}) == len(starts)


def test_anchor_changes_are_rare_over_a_long_slide():
    starts = set()
    positions = range(40_000, 48_000, 4)
    for cursor in positions:
        prefix = SOURCE[cursor - 3000 : cursor]
        starts.add(cursor - 3000 + stable_prefix_start(prefix))
    lines_passed = SOURCE[40_000 - 3000 : 48_000 - 3000].count("\n")
    assert len(starts) < lines_passed / 3


def test_short_prefixes_are_kept_whole():
    assert stable_prefix_start("x = 1\n" * 100) == 0


def encode_chars(prefix, suffix):
    """A stand-in tokenizer: one token per character of the whole FIM prompt."""
    return list(fim_prompt(prefix, suffix, mode="spm").encode())


@pytest.mark.parametrize("budget", [500, 1500])
def test_fitting_cuts_at_anchors_that_move_rarely(budget):
    suffix = SOURCE[60_000:61_000]
    cuts = []
    for cursor in range(50_000, 50_400, 4):
        prefix = SOURCE[45_000:cursor]  # a fixed-start client: the prefix only grows
        ids, dropped = fit_fim_stably(prefix, suffix, encode_chars, budget)
        assert len(ids) <= budget and dropped == len(encode_chars(prefix, suffix)) - len(ids)
        kept_prefix = bytes(ids).decode().split("<|fim_prefix|>")[1][: -len("<|fim_middle|>")]
        assert prefix.endswith(kept_prefix)
        cuts.append(len(prefix) - len(kept_prefix))
    assert len(set(cuts)) <= 4  # 100 requests, a handful of cut points
    assert all(b >= a for a, b in zip(cuts, cuts[1:], strict=False))  # the cut only moves on


def test_fitting_keeps_a_prompt_that_fits():
    ids, dropped = fit_fim_stably("def f():\n", "\n", encode_chars, 10_000)
    assert dropped == 0 and ids == encode_chars("def f():\n", "\n")


def test_fitting_trims_a_long_suffix_to_a_quarter():
    ids, _ = fit_fim_stably("x = 1\n", SOURCE[:5000], encode_chars, 1000)
    text = bytes(ids).decode()
    suffix = text.split("<|fim_suffix|>")[1].split("<|fim_prefix|>")[0]
    assert len(suffix) <= 250 and SOURCE.startswith(suffix)
