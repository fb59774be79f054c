"""The `codegemma` command, in-process and as the installed console script."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import codegemma
from codegemma.cli import main


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_complete_json_matches_the_api(capsys, mqa_checkpoint):
    code, out, _ = run_cli(
        capsys,
        "complete",
        "--model",
        mqa_checkpoint,
        "--prefix",
        "def f(x):\n    ",
        "--suffix",
        "\n",
        "--max-new-tokens",
        "10",
        "--json",
    )
    assert code == 0
    record = json.loads(out)
    expected = codegemma.load(mqa_checkpoint).complete("def f(x):\n    ", "\n", max_new_tokens=10)
    assert record["text"] == expected.text
    assert record["finish_reason"] == expected.finish_reason
    assert record["usage"]["completion_tokens"] == expected.usage.completion_tokens


def test_complete_file_at_cursor_prints_the_whole_file(capsys, mqa_checkpoint, tmp_path):
    source = tmp_path / "code.py"
    source.write_text("import os\n\ndef main():\n    \n")
    code, out, _ = run_cli(
        capsys,
        "complete",
        "--model",
        mqa_checkpoint,
        "--file",
        source,
        "--cursor",
        "4:5",
        "--whole-file",
        "--max-new-tokens",
        "6",
    )
    assert code == 0
    middle = (
        codegemma.load(mqa_checkpoint)
        .complete("import os\n\ndef main():\n    ", "\n", max_new_tokens=6)
        .text
    )
    assert out.rstrip("\n") == ("import os\n\ndef main():\n    " + middle + "\n").rstrip("\n")


def test_generate_reads_the_model_from_the_environment(capsys, mqa_checkpoint, monkeypatch):
    monkeypatch.setenv("CODEGEMMA_MODEL", str(mqa_checkpoint))
    code, out, _ = run_cli(capsys, "generate", "x = ", "--max-new-tokens", "5", "--json")
    assert code == 0 and json.loads(out)["usage"]["completion_tokens"] <= 5


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--model", "/nonexistent/model", "x"], "does not exist"),
        (
            ["complete", "--model", "{ckpt}", "--prefix", "a", "--cursor", "1:1"],
            "--cursor goes with --file",
        ),
        (
            ["complete", "--model", "{ckpt}", "--file", "{bad}", "--cursor", "1:1"],
            "not valid UTF-8",
        ),
        (["generate", "--model", "{ckpt}", "--dtype", "float16", "x"], "refused on the CPU"),
        (["generate", "--model", "{ckpt}", "--max-new-tokens", "-3", "x"], "max_new_tokens"),
    ],
)
def test_errors_are_one_line_messages(capsys, mqa_checkpoint, tmp_path, monkeypatch, args, message):
    monkeypatch.delenv("CODEGEMMA_MODEL", raising=False)
    bad = tmp_path / "bad.py"
    bad.write_bytes(b"\xff\xfe")
    args = [a.format(ckpt=mqa_checkpoint, bad=bad) for a in args]
    code, _, err = run_cli(capsys, *args)
    assert code == 1
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_no_model_means_the_shipped_default_model(capsys, monkeypatch):
    from codegemma.default_model import default_model_dir

    monkeypatch.delenv("CODEGEMMA_MODEL", raising=False)
    code, out, _ = run_cli(capsys, "generate", "import ", "--max-new-tokens", "4", "--json")
    assert code == 0
    expected = codegemma.load(default_model_dir()).generate("import ", max_new_tokens=4)
    assert json.loads(out)["text"] == expected.text


def test_console_script_chat_reads_piped_stdin(mqa_checkpoint):
    exe = shutil.which("codegemma") or os.path.join(os.path.dirname(sys.executable), "codegemma")
    proc = subprocess.run(
        [exe, "chat", "--model", str(mqa_checkpoint), "--max-new-tokens", "4", "--json"],
        input="What is 2 + 2?",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["usage"]["completion_tokens"] <= 4
    lm = codegemma.load(mqa_checkpoint)
    expected = lm.chat([{"role": "user", "content": "What is 2 + 2?"}], max_new_tokens=4)
    assert record["text"] == expected.text


def test_make_demo_model_is_loadable(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "make-demo-model", tmp_path / "demo")
    assert code == 0 and "random" in out
    lm = codegemma.load(tmp_path / "demo")
    result = lm.complete("import ", "\n", max_new_tokens=4)
    assert result.usage.completion_tokens <= 4
