"""The shipped default model, its recipe's held-out split, and the exact-match scorer."""

import json
from types import SimpleNamespace

import pytest

import codegemma
from codegemma.default_model import default_model_dir
from codegemma.training import default_recipe
from codegemma.training.dataset import Document
from codegemma.training.line_infilling import fit_task, line_tasks, score_line_tasks
from codegemma.training.model_card import (
    EXACT_MATCH_TARGET,
    RECIPE_COMMAND,
    render_model_card,
)

MODEL_FILES = default_recipe.MODEL_FILES


def _record() -> dict:
    return json.loads((default_model_dir() / "training.json").read_text())


def test_the_default_model_ships_small_with_its_card():
    directory = default_model_dir()
    sizes = {name: (directory / name).stat().st_size for name in MODEL_FILES}
    assert sum(sizes.values()) <= 25 * 2**20
    record = _record()
    card = (directory / "MODEL_CARD.md").read_text()
    assert card == render_model_card(record, default_recipe.recipe_settings())
    score = record["held_out_line_infilling"]
    assert score["tasks"] == 1000
    assert f"{100 * score['exact_match']:.1f}%" in card  # the card states the measured score
    assert f"{record['steps']}" in card and "codegemma train-default-model" in card
    assert record["steps"] == default_recipe.TRAIN_CONFIG.steps


@pytest.mark.xfail(
    strict=True,
    reason="issue 7's target is missed: the shipped model scores 0.9% (see MODEL_CARD.md)",
)
def test_the_default_model_reaches_the_exact_match_target():
    assert _record()["held_out_line_infilling"]["exact_match"] >= EXACT_MATCH_TARGET


def test_load_without_a_model_completes_with_the_default_model():
    lm = codegemma.load()
    assert lm.path == default_model_dir()
    assert lm.weights == "float32"  # the precision its card's scores were measured in
    assert codegemma.load(dtype="bfloat16").weights == "bfloat16"  # unless asked otherwise
    done = lm.complete(
        "class Point:\n    def __init__(self, x, y):\n        self.x = x\n", "\n", max_new_tokens=16
    )
    # A weak model (see its card), but it fills a hole the way it was trained to: one
    # indented line, then a stop token.
    assert done.finish_reason == "stop"
    assert done.text.startswith("        ") and done.text.endswith("\n") and "<|" not in done.text


def test_held_out_modules_and_their_tests_never_reach_training():
    files = {
        "fractions.py": "a",
        "test/test_fractions.py": "b",
        "test/test_json/test_dump.py": "c",
        "json/encoder.py": "d",
        "json/decoder.py": "e",
        "os.py": "f",
        "unittest/test/test_case.py": "g",
        "idlelib/idle_test/htest.py": "h",
        "idlelib/editor.py": "i",
        "test/test_os.py": "j",
        "encodings/cp1252.py": "k",
    }
    library = [d.path for d in default_recipe.library_documents(files)]
    assert sorted(library) == ["idlelib/editor.py", "json/decoder.py", "os.py"]
    tests = [d.path for d in default_recipe.test_documents(files)]
    assert sorted(tests) == [
        "idlelib/idle_test/htest.py",
        "test/test_os.py",
        "unittest/test/test_case.py",
    ]
    trained = [d.path for d in default_recipe.training_documents(files)]
    assert trained == library + tests
    held = [d.path for d in default_recipe.held_out_documents(files)]
    assert held == ["fractions.py", "json/encoder.py"]


def test_line_tasks_hide_one_non_blank_line_with_context_around_it():
    text = "".join(f"line{i}\n" if i % 3 else "\n" for i in range(30))
    tasks = line_tasks([Document("a.py", text)], 5, seed=1, prefix_lines=4, suffix_lines=2)
    assert len(tasks) == 5
    for task in tasks:
        lines = text.splitlines(keepends=True)
        assert task.middle == lines[task.line] and task.middle.strip()
        assert task.prefix == "".join(lines[max(0, task.line - 4) : task.line])
        assert task.suffix == "".join(lines[task.line + 1 : task.line + 3])


def test_fit_task_keeps_the_lines_nearest_the_hole():
    task = line_tasks([Document("a.py", "".join(f"x{i}\n" for i in range(40)))], 1, seed=0)[0]
    fitted = fit_task(task, count_tokens=len, budget=40)  # one "token" per character
    assert fitted.suffix == task.suffix[: len(fitted.suffix)]
    assert task.prefix.endswith(fitted.prefix)
    assert len(fitted.prefix) + len(fitted.suffix) <= 40 and len(fitted.suffix) <= 10


def test_exact_match_counts_first_line_and_strict_answers():
    answers = iter(["    return x\n", "    return x\n    extra", "  return x", "    return y"])

    class FakeLM:
        context_length = 512
        tokenizer = SimpleNamespace(encode=lambda text, add_bos=False: list(text))

        def complete(self, prefix, suffix, **options):
            return SimpleNamespace(text=next(answers))

    text = "def f(x):\n    return x\n"
    task = [t for t in line_tasks([Document("a.py", text)], 10) if t.line == 1]
    scores = score_line_tasks(FakeLM(), task * 4)
    assert scores["exact_match"] == pytest.approx(0.5)
    assert scores["exact_match_strict"] == pytest.approx(0.25)


def test_the_card_states_the_record():
    record = {
        "steps": 1234,
        "batch_size": 16,
        "seq_len": 256,
        "train_tokens": 5_000_000,
        "train_seconds": 3000,
        "tokens_per_second": 1667,
        "threads": 2,
        "train_loss": 2.3456,
        "held_out_loss": 2.9876,
        "parameters": 3_000_000,
        "python": "3.11.7",
        "held_out_line_infilling": {"tasks": 1000, "exact_match": 0.123, "exact_match_strict": 0.1},
        "humaneval_single_line": {"standard": {"pass@1": 4.26}},
    }
    card = render_model_card(record, default_recipe.recipe_settings())
    for text in ("1234 x 16", "5,000,000", "2.346", "2.988", "**12.3%**", "4.3%", "PSF-2.0"):
        assert text in card, text
    assert RECIPE_COMMAND in card and "calendar.py" in card
