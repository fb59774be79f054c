"""serve --repo: FIM prompts start with chunks of the repository's other files, chosen per
request (retrieval time reported), and the chosen context stays put while the user types, so
the KV cache of it is reused."""

import subprocess
import sys

import httpx
import pytest
from serving_helpers import lively_engine, running_server

from codegemma.serving.repo import RepoSource

UTIL = '''def compute_total(prices, tax_rate):
    """The sum of the prices with tax."""
    subtotal = sum(prices)
    return subtotal * (1 + tax_rate)


def format_money(amount):
    return f"${amount:,.2f}"
'''
MAIN = "from util import compute_total, format_money\n\n\ndef checkout(cart):\n    total = "


@pytest.fixture
def repo(tmp_path):
    pytest.importorskip("bm25s")  # extra 'repo' (in the test extra: never skipped in CI)
    (tmp_path / "util.py").write_text(UTIL)
    (tmp_path / "main.py").write_text(MAIN)
    return tmp_path


def infill(url, prefix, suffix="\n"):
    body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 4, "temperature": 0}
    answer = httpx.post(f"{url}/infill", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_fim_prompts_get_the_repository_context(repo, tiny_tokenizer):
    lm = lively_engine(tiny_tokenizer)
    source = RepoSource(repo, lm.tokenizer, budget=120)
    assert source.report.files == 2
    with running_server(lm) as (url, _):
        plain = infill(url, MAIN)
    with running_server(lm, repo=source) as (url, _):
        first = infill(url, MAIN)
        typed = infill(url, MAIN + "comp")  # one keystroke later, at the same place
    context_tokens = first["tokens_evaluated"] - plain["tokens_evaluated"]
    assert context_tokens > 20  # the chunk of util.py went before the file
    assert first["timings"]["retrieval_ms"] > 0 and plain["timings"]["retrieval_ms"] == 0
    # the same context for the next keystroke: everything before the cursor was reused
    assert typed["tokens_cached"] >= first["tokens_evaluated"] - 2


def test_the_flags_are_checked_before_loading(tmp_path):
    serve = [sys.executable, "-c", "from codegemma.cli import main; raise SystemExit(main())"]
    cases = {
        ("--repo-tokens", "50"): "--repo-tokens needs --repo",
        ("--repo", str(tmp_path / "missing")): "is not a directory",
        ("--repo", str(tmp_path), "--replicas", "2"): "cannot be combined with --replicas",
    }
    for flags, message in cases.items():
        done = subprocess.run(
            [*serve, "serve", "--port", "18731", *flags], capture_output=True, text=True
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr
