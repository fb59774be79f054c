"""The trainer: loss goes down, runs resume exactly, saved models reload with the same logits."""

import shutil

import pytest
import torch
from tiny_models import tiny_config

import codegemma
from codegemma.checkpoint.hf_dir import save_hf_checkpoint
from codegemma.model import GemmaForCausalLM
from codegemma.training.dataset import Document, pack_rows
from codegemma.training.default_recipe import init_weights
from codegemma.training.trainer import CHECKPOINT, TrainConfig, evaluate, train


@pytest.fixture(scope="module")
def rows(tiny_tokenizer, tiny_tokenizer_corpus):
    docs = [Document(f"f{i}.py", text) for i, text in enumerate(tiny_tokenizer_corpus[:4])]
    return pack_rows(docs, tiny_tokenizer, 64, seed=0)


def fresh_model(vocab_size: int, seed: int = 0) -> GemmaForCausalLM:
    model = GemmaForCausalLM(tiny_config(vocab_size, intermediate_size=96))
    init_weights(model, seed=seed)
    return model.train()


def quiet(_line: str) -> None:
    pass


def test_twenty_steps_lower_the_loss(rows, tiny_tokenizer, tmp_path):
    model = fresh_model(tiny_tokenizer.vocab_size)
    pad = tiny_tokenizer.pad_id
    before = evaluate(model, rows, pad)
    config = TrainConfig(steps=20, batch_size=4, lr=3e-3, warmup_steps=2, log_every=5)
    result = train(model, rows, rows[:4], config, tmp_path, pad_id=pad, log=quiet)
    after = evaluate(model, rows, pad)
    assert result.finished and result.step == 20 and result.seconds > 0
    assert result.tokens == 20 * 4 * 63 - _pad_targets(rows, 80, config)
    assert after < before - 1.0, (before, after)
    log = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert len([line for line in log if '"tokens_per_s"' in line]) == 4
    assert any('"eval_loss"' in line for line in log)


def _pad_targets(rows, count, config):
    """Pad targets among the first `count` rows the trainer drew (seeded order)."""
    from codegemma.training.trainer import _RowOrder

    picked = rows[_RowOrder(len(rows), config.seed).indices(0, count)]
    return int((picked[:, 1:] == 0).sum())


def test_an_interrupted_run_resumes_to_the_same_weights(rows, tiny_tokenizer, tmp_path):
    pad = tiny_tokenizer.pad_id
    config = TrainConfig(steps=6, batch_size=3, lr=3e-3, warmup_steps=2, checkpoint_every=100)
    straight = fresh_model(tiny_tokenizer.vocab_size)
    train(straight, rows, None, config, tmp_path / "a", pad_id=pad, log=quiet)

    stopped = fresh_model(tiny_tokenizer.vocab_size)
    first = train(
        stopped,
        rows,
        None,
        TrainConfig(**{**config.__dict__, "max_seconds": 0.0}),
        tmp_path / "b",
        pad_id=pad,
        log=quiet,
    )
    assert first.step == 1 and not first.finished
    assert (tmp_path / "b" / CHECKPOINT).is_file()
    resumed = fresh_model(tiny_tokenizer.vocab_size, seed=7)  # weights come from the checkpoint
    done = train(resumed, rows, None, config, tmp_path / "b", pad_id=pad, log=quiet)
    assert done.finished and done.step == 6
    for (name, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_a_checkpoint_with_other_settings_is_refused(rows, tiny_tokenizer, tmp_path):
    pad = tiny_tokenizer.pad_id
    model = fresh_model(tiny_tokenizer.vocab_size)
    train(model, rows, None, TrainConfig(steps=2, batch_size=2), tmp_path, pad_id=pad, log=quiet)
    with pytest.raises(ValueError, match="other steps"):
        train(model, rows, None, TrainConfig(steps=3, batch_size=2), tmp_path, pad_id=pad)


def test_a_trained_model_reloads_through_load_with_the_same_logits(
    rows, tiny_tokenizer, tiny_tokenizer_dir, tmp_path
):
    model = fresh_model(tiny_tokenizer.vocab_size)
    config = TrainConfig(steps=5, batch_size=4, lr=3e-3, warmup_steps=1)
    train(model, rows, None, config, tmp_path / "run", pad_id=tiny_tokenizer.pad_id, log=quiet)
    save_hf_checkpoint(model.eval(), tmp_path / "model")
    shutil.copyfile(tiny_tokenizer_dir / "tokenizer.model", tmp_path / "model" / "tokenizer.model")

    lm = codegemma.load(tmp_path / "model", dtype="float32", kernels="torch")
    ids = tiny_tokenizer.encode("def get(self, key):\n    return self.items[key]\n")
    with torch.no_grad():
        expected = model(torch.tensor([ids]), logits_positions=slice(None))[0]
    torch.testing.assert_close(lm.logits(ids), expected, rtol=1e-5, atol=1e-5)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    config = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert config.lr_at(0) == pytest.approx(1e-4)
    assert config.lr_at(9) == pytest.approx(1e-3)
    assert config.lr_at(55) == pytest.approx(0.55e-3)
    assert config.lr_at(100) == pytest.approx(1e-4)
