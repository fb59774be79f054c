"""`codegemma index DIR` and `codegemma complete --repo DIR`."""

from __future__ import annotations

import json
import sys

from codegemma.cli import main

UTILS = 'def format_size(n):\n    """Bytes as text."""\n    return f"{n} B"\n'
APP = "from utils import format_size\n\n\ndef show(n):\n    text = \n    return text\n"


def test_index_then_update_only_what_changed(tmp_path, capsys):
    (tmp_path / "utils.py").write_text(UTILS)
    (tmp_path / "app.py").write_text(APP)
    assert main(["index", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 files, 3 chunks indexed; 2 files chunked, 0 removed" in out
    assert (tmp_path / ".codegemma" / "index" / "chunks.json").is_file()
    (tmp_path / "app.py").unlink()
    assert main(["index", str(tmp_path), "--no-progress"]) == 0
    assert "1 files, 1 chunks indexed; 0 files chunked, 1 removed" in capsys.readouterr().out
    assert main(["index", str(tmp_path / "missing")]) == 1
    assert "is not a directory" in capsys.readouterr().err


def test_complete_with_repo_context_reports_what_it_used(tmp_path, capsys, mqa_checkpoint):
    (tmp_path / "utils.py").write_text(UTILS)
    (tmp_path / "app.py").write_text(APP)
    argv = [
        "complete",
        "--model",
        str(mqa_checkpoint),
        "--repo",
        str(tmp_path),
        "--file",
        str(tmp_path / "app.py"),
        "--cursor",
        "5:12",
        "--max-new-tokens",
        "4",
        "--json",
    ]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    retrieval = record["retrieval"]
    assert retrieval["retrieval_ms"] > 0 and retrieval["tokens"] > 0
    assert retrieval["chunks"] == [{"path": "utils.py", "lines": [1, 3]}]  # not app.py itself
    assert record["usage"]["prompt_tokens"] > retrieval["tokens"]
    # The index was made on the way, and is kept for the next request.
    assert (tmp_path / ".codegemma" / "index" / "chunks.json").is_file()


def test_a_missing_extra_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    (tmp_path / "utils.py").write_text(UTILS)
    for module in ("bm25s", "tree_sitter_python"):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, module, None)  # import fails
            assert main(["index", str(tmp_path), "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"'{module}'" in err
        assert "pip install 'codegemma[repo]'" in err
