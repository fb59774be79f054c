"""The FIM transform and its split points."""

import ast
import random
import textwrap

import pytest

from codegemma.fim import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, fim_prompt
from codegemma.training.fim_transform import FimOptions, fim_transform
from codegemma.training.split_points import (
    Candidates,
    candidates_for,
    generic_candidates,
    python_candidates,
)

SOURCE = '''\
import math


class Circle:
    """A circle: radius r, café ☕ units."""

    def __init__(self, r):
        self.r = r

    def area(self):
        if self.r < 0:
            raise ValueError("negative radius")
        elif self.r == 0:
            return 0.0
        return math.pi * self.r ** 2


def total(circles):
    return sum(c.area() for c in circles)  # the sum of areas
'''

SENTINELS = (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)


def only(kind: str) -> FimOptions:
    return FimOptions(fim_rate=1.0, kind_weights={kind: 1.0})


@pytest.mark.parametrize("splits", ["syntax", "random"])
def test_every_example_reassembles_its_document_with_the_inference_layout(splits):
    rng = random.Random(0)
    options = FimOptions(splits=splits)
    candidates = candidates_for("circle.py", SOURCE)
    for _ in range(500):
        ex = fim_transform(SOURCE, rng, options, candidates)
        assert ex.prefix + ex.middle + ex.suffix == SOURCE
        text = ex.text()
        if ex.mode == "plain":
            assert text == SOURCE
            continue
        # The training text is exactly the inference prompt followed by the middle.
        assert text == fim_prompt(ex.prefix, ex.suffix, mode=ex.mode) + ex.middle
        assert [text.count(s) for s in SENTINELS] == [1, 1, 1]
        assert text.startswith(FIM_PREFIX if ex.mode == "psm" else FIM_SUFFIX)
        assert text.index(FIM_MIDDLE) == len(text) - len(ex.middle) - len(FIM_MIDDLE)


@pytest.mark.parametrize("fim_rate, spm_rate", [(0.9, 0.5), (0.5, 0.2)])
def test_observed_rates_match_the_options(fim_rate, spm_rate):
    rng = random.Random(1)
    options = FimOptions(fim_rate=fim_rate, spm_rate=spm_rate)
    modes = [fim_transform(SOURCE, rng, options).mode for _ in range(6000)]
    fim = [m for m in modes if m != "plain"]
    assert abs(len(fim) / len(modes) - fim_rate) < 0.02
    assert abs(fim.count("spm") / len(fim) - spm_rate) < 0.03


def test_line_middles_are_whole_non_blank_lines():
    rng = random.Random(2)
    candidates = python_candidates(SOURCE)
    for _ in range(200):
        ex = fim_transform(SOURCE, rng, only("line"), candidates)
        assert ex.middle.endswith("\n") and ex.middle.count("\n") == 1 and ex.middle.strip()
        assert ex.prefix == "" or ex.prefix.endswith("\n")


def test_expression_middles_are_python_expressions():
    rng = random.Random(3)
    candidates = python_candidates(SOURCE)
    seen = set()
    for _ in range(200):
        ex = fim_transform(SOURCE, rng, only("expression"), candidates)
        ast.parse(ex.middle.strip(), mode="eval")  # raises if not an expression
        seen.add(ex.middle)
    # Byte columns of the non-ASCII docstring line are converted to characters.
    assert '"""A circle: radius r, café ☕ units."""' in seen


def test_statement_middles_are_whole_lines_that_parse():
    rng = random.Random(4)
    candidates = python_candidates(SOURCE)
    parsed = 0
    for _ in range(200):
        ex = fim_transform(SOURCE, rng, only("statement"), candidates)
        assert ex.prefix == "" or ex.prefix.endswith("\n")
        assert ex.middle.endswith("\n")
        try:
            ast.parse(textwrap.dedent(ex.middle))
            parsed += 1
        except SyntaxError:
            assert ex.middle.lstrip().startswith("elif")  # an elif clause and what follows
    assert parsed > 150


def test_line_tails_start_at_a_token_and_stop_at_the_line_end():
    rng = random.Random(5)
    candidates = python_candidates(SOURCE)
    for _ in range(200):
        ex = fim_transform(SOURCE, rng, only("line_tail"), candidates)
        assert "\n" not in ex.middle and ex.middle
        assert ex.suffix.startswith("\n")
        assert ex.prefix[-1] not in "\n" and ex.prefix.split("\n")[-1].strip()


def test_invalid_python_and_other_languages_use_line_level_candidates():
    broken = "def f(:\n    return 1\n"
    assert python_candidates(broken) is None
    assert set(candidates_for("x.py", broken).kinds) == {"line", "lines", "line_tail"}
    js = "function f(a) {\n  return a + 1;\n}\n"
    assert candidates_for("x.js", js).kinds == generic_candidates(js).kinds
    assert generic_candidates(js).kinds["line"] == [(0, 16), (16, 32), (32, 34)]


def test_candidates_within_a_window_are_shifted_and_inside_it():
    full = Candidates({"line": [(0, 5), (5, 9), (9, 20)], "expression": [(6, 8), (7, 12)]})
    window = full.within(5, 12)
    assert window.kinds == {"line": [(0, 4)], "expression": [(1, 3), (2, 7)]}


def test_options_are_validated():
    with pytest.raises(ValueError):
        FimOptions(fim_rate=1.5)
    with pytest.raises(ValueError):
        FimOptions(splits="ast")
    with pytest.raises(ValueError):
        FimOptions(kind_weights={"line": 0.0})
