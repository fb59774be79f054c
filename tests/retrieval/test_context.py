"""Context for one completion: within the token budget, other files only, in a stable order."""

from __future__ import annotations

import pytest

from codegemma.fim import fim_prompt
from codegemma.retrieval.context import ContextAssembler, ContextOptions, query_text
from codegemma.retrieval.index import RepoIndex

SETTINGS = '''\
import yaml


def load_settings_from_disk(path):
    """Read the yaml settings file from disk and parse it."""
    with open(path) as f:
        return yaml.safe_load(f)
'''
NETWORK = '''\
import socket


def download_remote_archive(url):
    """Download the remote archive over http, chunk by chunk."""
    connection = socket.create_connection((url, 80))
    return connection.recv(4096)
'''
MISC = """\
def unrelated_helper(values):
    return sorted(values)


def another_helper(text):
    return text.strip().lower()
"""
FILLER = "".join(f"    step_{i} = compute_step({i})\n" for i in range(12))
APP_HEAD = "import os\n\n\ndef configure():\n    # read the yaml settings from disk\n"


@pytest.fixture()
def index(tmp_path):
    files = {
        "z_settings.py": SETTINGS,
        "a_network.py": NETWORK,
        "misc.py": MISC,
        "app.py": APP_HEAD + "    conf = None\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    repo = RepoIndex(tmp_path)
    repo.update()
    return repo


def counter(tokenizer):
    return lambda text: len(tokenizer.encode(text, add_bos=False))


def added_tokens(tokenizer, prefix, suffix, path, files):
    with_files = tokenizer.encode(fim_prompt(prefix, suffix, files=files, path=path))
    alone = tokenizer.encode(fim_prompt(prefix, suffix, path=path))
    return len(with_files) - len(alone)


@pytest.mark.parametrize("budget", [0, 12, 30, 60, 400])
def test_the_context_stays_within_its_token_budget(index, tiny_tokenizer, budget):
    assembler = ContextAssembler(index, counter(tiny_tokenizer), ContextOptions(budget=budget))
    prefix, suffix = APP_HEAD + "    conf = ", "\n"
    context = assembler.context(prefix, suffix, "app.py")
    assert context.tokens <= budget
    # Exact: the tokens the files add to the real prompt.
    assert added_tokens(tiny_tokenizer, prefix, suffix, "app.py", context.files) == context.tokens
    if budget >= 60:
        assert context.files and context.chunks
    if budget == 0:
        assert context.files == [] and context.tokens == 0


def test_a_large_budget_shows_the_relevant_files_whole_in_path_order_not_score_order(
    index, tiny_tokenizer
):
    options = ContextOptions(budget=1000, chunk_tokens=1000)
    assembler = ContextAssembler(index, counter(tiny_tokenizer), options)
    prefix = APP_HEAD + "    # then download the remote archive over http\n    conf = "
    context = assembler.context(prefix, "\n", "app.py")
    paths = [path for path, _ in context.files]
    assert "z_settings.py" in paths and "a_network.py" in paths
    assert paths == sorted(paths)
    assert "app.py" not in paths  # never the current file
    assert dict(context.files)["z_settings.py"] == SETTINGS.replace("\n\n\n", "\n")  # 2 chunks
    assert context.retrieval_ms > 0
    shown = context.as_dict()
    assert shown["tokens"] == context.tokens and shown["chunks"][0]["path"] == paths[0]
    # With no current file (text typed on the command line), every file may be shown.
    loose = ContextAssembler(index, counter(tiny_tokenizer), options)
    assert "app.py" in [p for p, _ in loose.context("    conf = None\n", "", None).files]


def test_definitions_named_in_the_current_file_come_before_bm25_matches(index, tiny_tokenizer):
    # The import is far from the cursor: BM25 on the lines near it cannot find the helper.
    prefix = "from misc import another_helper\n" + APP_HEAD + FILLER + "    conf = "
    options = ContextOptions(budget=40, chunk_tokens=40)
    assembler = ContextAssembler(index, counter(tiny_tokenizer), options)
    context = assembler.context(prefix, "\n", "app.py")
    assert [c.name for c in context.chunks] == ["another_helper"]
    hits = index.search(["yaml", "settings", "conf"], exclude="app.py")
    assert "another_helper" not in [h.chunk.name for h in hits]


def test_typing_at_one_place_keeps_the_same_context(index, tiny_tokenizer):
    options = ContextOptions(budget=40, candidates=2)
    assembler = ContextAssembler(index, counter(tiny_tokenizer), options)
    typed = "conf = load_settings"
    contexts = [
        assembler.context(APP_HEAD + "    " + typed[:n], "\n    return conf\n", "app.py")
        for n in range(len(typed) + 1)
    ]
    assert contexts[0].files and not contexts[0].kept
    assert all(c.files == contexts[0].files and c.kept for c in contexts[1:])
    prompts = {fim_prompt("", "", files=c.files, path="app.py") for c in contexts}
    assert len(prompts) == 1  # the start of the prompt never moves: a KV cache stays valid
    # Somewhere else in the file, about something else, the choice is made again.
    elsewhere = (
        APP_HEAD + FILLER + "\n\ndef fetch(url):\n    # download the remote archive over http\n"
    )
    moved = assembler.context(elsewhere + "    data = ", "\n", "app.py")
    assert not moved.kept and moved.files != contexts[0].files
    assert [p for p, _ in moved.files] == ["a_network.py"]


def test_without_stickiness_each_request_chooses_again(index, tiny_tokenizer):
    options = ContextOptions(budget=40, sticky=False)
    assembler = ContextAssembler(index, counter(tiny_tokenizer), options)
    first = assembler.context(APP_HEAD + "    conf = ", "\n", "app.py")
    second = assembler.context(APP_HEAD + "    conf = ", "\n", "app.py")
    assert not first.kept and not second.kept and first.files == second.files


def test_the_query_is_the_code_around_the_cursor():
    prefix = "".join(f"line{i}\n" for i in range(20)) + "x = par"
    assert query_text(prefix, "se(a)\nnext\nlast\n", 3, 2) == "line18\nline19\nx = parse(a)\nnext"
    assert query_text("a\nb", "c\nd", 1, 0) == "b"
    with pytest.raises(ValueError):
        ContextOptions(budget=-1)
