"""`codegemma finetune` and `codegemma train` end to end on a tiny model and repository."""

import json

import pytest
import torch

import codegemma
from codegemma.cli import main
from codegemma.lora import CONFIG_FILE, WEIGHTS_FILE


@pytest.fixture()
def repo(tmp_path, tiny_tokenizer_corpus):
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "cache.py").write_text(tiny_tokenizer_corpus[0])
    (root / "pkg" / "main.py").write_text("from pkg.cache import Cache\n\nCACHE = Cache(8)\n")
    (root / "web.js").write_text(tiny_tokenizer_corpus[1])
    return root


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


def common(checkpoint, repo, out):
    return [
        "--model", checkpoint, "--repo", repo, "--out", out, "--steps", "4",
        "--seq-len", "64", "--batch-size", "2", "--dtype", "float32",
        "--log-every", "2", "--eval-every", "2", "--held-out", "0.2",
    ]  # fmt: skip


def test_finetune_writes_a_loadable_adapter_and_resumes(capsys, mqa_checkpoint, repo, tmp_path):
    out = tmp_path / "adapter"
    summary, err = run(capsys, "finetune", *common(mqa_checkpoint, repo, out), "--rank", "4")
    assert summary["finished"] and summary["steps"] == 4 and summary["held_out_loss"] > 0
    assert "tokens_per_s" in err and "eval_loss" in err
    assert (out / CONFIG_FILE).is_file() and (out / WEIGHTS_FILE).is_file()
    lm = codegemma.load(mqa_checkpoint, dtype="float32", kernels="torch", adapter=out)
    assert lm.complete("import ", "\n", max_new_tokens=3).usage.completion_tokens <= 3

    again, err = run(capsys, "finetune", *common(mqa_checkpoint, repo, out), "--rank", "4")
    assert "resumed" in err and "step 2 " not in err  # nothing left to train
    assert again["train_tokens"] == summary["train_tokens"]


def test_train_updates_every_weight_and_writes_a_model(capsys, mqa_checkpoint, repo, tmp_path):
    out = tmp_path / "model"
    summary, _ = run(capsys, "train", *common(mqa_checkpoint, repo, out), "--lr", "1e-3")
    assert summary["finished"]
    base = codegemma.load(mqa_checkpoint, dtype="float32", kernels="torch")
    tuned = codegemma.load(out, dtype="float32", kernels="torch")
    for (name, a), (_, b) in zip(
        base.model.named_parameters(), tuned.model.named_parameters(), strict=True
    ):
        assert not torch.equal(a, b), name


def test_train_tokenizer_keeps_gemma_settings_and_codegemma_tokens(capsys, repo, tmp_path):
    from codegemma.tokenizer import Tokenizer

    out = tmp_path / "tok" / "tokenizer.model"
    assert (
        main(["train-tokenizer", "--repo", str(repo), "--out", str(out), "--vocab-size", "400"])
        == 0
    )
    assert "pieces from 3 files" in capsys.readouterr().out
    tokenizer = Tokenizer.from_file(out)
    for token in ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|file_separator|>"):
        assert tokenizer.token_id(token) is not None
    text = "    x = 12345  # ünïcode ✅\n\n"
    ids = tokenizer.encode(text, add_bos=False)
    assert tokenizer.decode(ids) == text  # whitespace kept, no dummy prefix
    digits = [tokenizer.id_to_piece(i) for i in tokenizer.encode("12345", add_bos=False)]
    assert digits == ["1", "2", "3", "4", "5"]  # digits split


def test_an_empty_repository_is_a_one_line_error(capsys, mqa_checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    code = main(["finetune", *map(str, common(mqa_checkpoint, tmp_path / "empty", tmp_path / "o"))])
    assert code == 1 and "no source files" in capsys.readouterr().err
