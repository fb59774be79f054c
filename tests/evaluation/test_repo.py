"""Repo-completion: the benchmark builder, its scores, and `codegemma eval` end to end."""

from __future__ import annotations

import json

import pytest

from codegemma.cli import main
from codegemma.evaluation.repo_data import package_tasks, repo_completion_dataset
from codegemma.evaluation.similarity import edit_similarity, exact_match, levenshtein

PACKAGE = {
    "__init__.py": "from .core import Widget\n",
    "core.py": (
        "DEFAULT_SIZE = 3\n\n\n"
        "class Widget:\n    def __init__(self, size):\n        self.size = size\n\n\n"
        "def make_widget(size=DEFAULT_SIZE):\n    return Widget(size)\n"
    ),
    "util.py": (
        "from . import core\n"
        "from .core import make_widget as build\n"
        "from tinypkg import Widget\n"
        "\n\n"
        "def twice():\n"
        "    first = build(2)\n"  # line 6: a renamed import
        "    return [first, core.make_widget(4)]\n"  # line 7: a module's attribute
        "\n\n"
        "def shadowed(build):\n"
        "    return build(1)\n"  # a parameter hides the import: no task
        "\n\n"
        "def label(w):\n"
        '    return f"{Widget}"\n'  # inside an f-string: no task
        "\n\n"
        "def check(w):\n"
        "    return isinstance(w, Widget)\n"  # line 19: through the re-export in __init__
    ),
    "sub/__init__.py": "",
    "sub/deep.py": "from ..core import DEFAULT_SIZE\n\nLIMIT = DEFAULT_SIZE * 2\n",
}


@pytest.fixture()
def site(tmp_path, monkeypatch):
    for rel, text in PACKAGE.items():
        path = tmp_path / "tinypkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_tasks_hide_lines_that_use_names_of_other_files(site):
    tasks = package_tasks(site, "tinypkg")
    found = {(t.path, t.cross_file.line): t for t in tasks}
    assert sorted(found) == [
        ("tinypkg/sub/deep.py", 2),
        ("tinypkg/util.py", 6),
        ("tinypkg/util.py", 7),
        ("tinypkg/util.py", 19),
    ]
    expected = {
        ("tinypkg/util.py", 6): ("build", "make_widget", "tinypkg/core.py", 8),
        ("tinypkg/util.py", 7): ("core.make_widget", "make_widget", "tinypkg/core.py", 8),
        ("tinypkg/util.py", 19): ("Widget", "Widget", "tinypkg/core.py", 3),
        ("tinypkg/sub/deep.py", 2): ("DEFAULT_SIZE", "DEFAULT_SIZE", "tinypkg/core.py", 0),
    }
    for key, task in found.items():
        use = task.cross_file
        name, defined, path, line = expected[key]
        assert (use.name, use.definition_name, use.definition_path) == (name, defined, path)
        assert use.definition_line == line
        source = (site / task.path).read_text()
        assert task.prompt + task.solution + task.suffix == source
        assert task.solution == source.split("\n")[use.line] and task.prompt.endswith("\n")
        assert name in task.solution  # the answer really uses the other file's name
        definition = (site / path).read_text().split("\n")[line]
        assert defined in definition and definition.split()[0] in ("def", "class", defined)


def test_the_build_is_deterministic_and_capped(site):
    first = repo_completion_dataset(["tinypkg"])
    second = repo_completion_dataset(["tinypkg"])
    assert first == second and len(first.tasks) == 4
    assert first.source["sha256"] == second.source["sha256"]
    package = first.source["packages"][0]
    assert package["package"] == "tinypkg" and package["root"] == str(site)
    assert len(package["sha256"]) == 64
    assert len(package_tasks(site, "tinypkg", per_file=1)) == 2  # util.py gives one
    assert len(package_tasks(site, "tinypkg", per_package=3)) == 3


def test_line_scores():
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3
    assert exact_match("    x = f(1)  \nmore", "x = f(1)")  # first line, ends stripped
    assert not exact_match("x = f(2)", "x = f(1)")
    assert edit_similarity("x = f(2)", "x = f(1)") == pytest.approx(1 - 1 / 8)
    assert edit_similarity("", "") == 1.0 and edit_similarity("abc", "") == 0.0


def test_eval_runs_three_settings_end_to_end_and_resumes(site, tmp_path, mqa_checkpoint, capsys):
    out = tmp_path / "run"
    argv = ["eval", "--task", "repo-completion", "--package", "tinypkg", "--out", str(out)]
    argv += ["--model", str(mqa_checkpoint), "--max-new-tokens", "6", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "none" in printed and "retrieved" in printed and "oracle" in printed
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["settings"]
    assert {s: rows[s]["tasks"] for s in rows} == {"none": 4, "retrieved": 4, "oracle": 4}
    assert rows["none"]["context_tokens"] == 0 and rows["oracle"]["shows_name"] == 100.0
    assert rows["retrieved"]["retrieval_ms"]["mean"] > 0
    assert rows["retrieved"]["vs_none"]["tasks"] == 4
    records = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 12
    for record in records:
        assert 0 <= record["edit_similarity"] <= 1
        assert record["exact_match"] == exact_match(record["completion"], record["reference"])
        assert (record["context_tokens"] > 0) == (record["setting"] != "none")
    settings = json.loads((out / "run.json").read_text())
    assert settings["data"]["packages"][0]["package"] == "tinypkg"
    assert settings["prompt"]["budget"] == {"in_file": 336, "context": 170}  # 512 - 6 new - 170
    # Again: nothing left to do. With another budget: refused, naming the difference.
    assert main(argv) == 0
    assert len((out / "samples.jsonl").read_text().splitlines()) == 12
    capsys.readouterr()
    assert main([*argv, "--context-tokens", "64"]) == 1
    assert "budget" in capsys.readouterr().err


def test_repo_options_are_checked(tmp_path, capsys):
    base = ["eval", "--out", str(tmp_path)]
    assert main([*base, "--task", "repo-completion", "--oracle"]) == 1
    assert main([*base, "--task", "humaneval", "--package", "tqdm"]) == 1
    err = capsys.readouterr().err
    assert "--oracle and --samples do not apply" in err and "go with --task repo-completion" in err
