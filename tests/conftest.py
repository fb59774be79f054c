"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# --------------------------------------------------------------------------- tiny tokenizer
# A Gemma-style SentencePiece model trained in well under a second on the corpus below, so
# tokenizer tests (and anything else needing real token ids) run without downloading the
# 256k-piece CodeGemma tokenizer.

_TINY_VOCAB_SIZE = 512

_PYTHON = '''\
import os
from pathlib import Path


class Cache:
    """LRU cache for parsed files."""

    def __init__(self, capacity: int = 128) -> None:
        self.capacity = capacity
        self.items: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        if key in self.items:
            value = self.items.pop(key)
            self.items[key] = value
            return value
        return None

    def put(self, key: str, value: bytes) -> None:
        if len(self.items) >= self.capacity:
            for old in list(self.items):
                if old != key:
                    del self.items[old]
                    break
        self.items[key] = value


def 합계(숫자들):
    # 숫자 목록의 합을 구합니다
    결과 = 0
    for 숫자 in 숫자들:
        결과 += 숫자
    return 결과


def main():
    path = Path(os.environ.get("DATA", "data.txt"))
    total = sum(int(line) for line in path.read_text().splitlines() if line.strip())
    print(f"total = {total:,} ✅ café naïve résumé")
    return 0
'''

_JS = """\
// 计算斐波那契数列 (Chinese comment)
function fibonacci(n) {
  if (n <= 1) {
    return n;
  }
  const memo = [0, 1];
  for (let i = 2; i <= n; i++) {
    memo[i] = memo[i - 1] + memo[i - 2];
  }
  return memo[n];
}

export const greet = (name) => {
  console.log(`Hello, ${name}! 🎉 你好 🚀`);
  return { ok: true, count: 42, ratio: 3.14159 };
};
"""

_C = (
    "#include <stdio.h>\r\n"
    "\r\n"
    "/* Résumé: déjà vu, crème brûlée */\r\n"
    "int main(int argc, char **argv) {\r\n"
    "\tint values[16] = {0};\r\n"
    "\tfor (int i = 0; i < 16; i++) {\r\n"
    "\t\tif (i % 2 == 0) {\r\n"
    "\t\t\tvalues[i] = i * 1024;\r\n"
    "\t\t} else {\r\n"
    "\t\t\tvalues[i] = -i;\r\n"
    "\t\t}\r\n"
    "\t}\r\n"
    '\tprintf("%d items, 2024-01-31\\n", argc);\r\n'
    "\treturn 0;\r\n"
    "}\r\n"
)


def _deep_indentation() -> str:
    # Indentation runs of every depth up to 32 spaces and 8 tabs, as in nested code.
    lines = []
    for depth in range(9):
        lines.append(" " * (4 * depth) + f"if level_{depth} > {depth * 7}:")
        lines.append("\t" * depth + f"x{depth} = y{depth} + 100{depth}")
    return "\n".join(lines) + "\n"


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny tensors gain nothing from a second intra-op thread, and on a busy machine waiting
    for it makes the suite several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_tokenizer_corpus() -> tuple[str, ...]:
    """The texts the tiny tokenizer is trained on (several copies, so merges repeat)."""
    return (_PYTHON, _JS, _C, _deep_indentation()) * 4


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(
    tiny_tokenizer_corpus: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Directory holding a freshly trained tiny Gemma-style ``tokenizer.model``."""
    from codegemma.tokenizer_training import train_tokenizer

    directory = tmp_path_factory.mktemp("tiny_tokenizer")
    train_tokenizer(tiny_tokenizer_corpus, directory / "tokenizer.model", _TINY_VOCAB_SIZE)
    return directory


@pytest.fixture(scope="session")
def tiny_tokenizer_json_dir(
    tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Sibling directory with the same tokenizer as ``tokenizer.json``, written by transformers."""
    transformers = pytest.importorskip("transformers")
    directory = tmp_path_factory.mktemp("tiny_tokenizer_json")
    reference = transformers.GemmaTokenizer.from_pretrained(tiny_tokenizer_dir, add_bos_token=True)
    reference.save_pretrained(directory)
    assert (directory / "tokenizer.json").is_file()
    assert not (directory / "tokenizer.model").exists()
    return directory


# --------------------------------------------------------------------------- tiny models
# Random-weight checkpoints in the Hugging Face layout, using the tiny tokenizer above.


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir: Path):
    from codegemma.tokenizer import Tokenizer

    return Tokenizer.from_dir(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def mqa_checkpoint(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("mqa"), tiny_tokenizer_dir, _TINY_VOCAB_SIZE)


@pytest.fixture(scope="session")
def mha_checkpoint(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import make_checkpoint

    return make_checkpoint(
        tmp_path_factory.mktemp("mha"),
        tiny_tokenizer_dir,
        _TINY_VOCAB_SIZE,
        seed=1,
        hidden_size=48,
        num_key_value_heads=4,
        head_dim=40,
    )


@pytest.fixture(scope="session")
def tiny_lm(mqa_checkpoint: Path):
    import codegemma

    return codegemma.load(mqa_checkpoint, dtype="float32")


@pytest.fixture(scope="session")
def trained_checkpoint(
    tiny_tokenizer_dir: Path, tiny_tokenizer_corpus, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A tiny model trained for a few seconds on the tokenizer corpus (widths fit 32-blocks)."""
    import shutil

    import torch
    from tiny_models import tiny_config, train_tiny

    from codegemma.checkpoint.hf_dir import save_hf_checkpoint
    from codegemma.random_model import random_model
    from codegemma.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(tiny_tokenizer_dir)
    ids = torch.tensor(tokenizer.encode("".join(tiny_tokenizer_corpus[:3])))
    config = tiny_config(tokenizer.vocab_size, hidden_size=128, intermediate_size=256)
    model = train_tiny(random_model(config, seed=0), ids)
    directory = tmp_path_factory.mktemp("trained")
    save_hf_checkpoint(model, directory)
    shutil.copy(tiny_tokenizer_dir / "tokenizer.model", directory / "tokenizer.model")
    return directory
