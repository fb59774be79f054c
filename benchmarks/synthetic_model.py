"""A random-weight model with the exact CodeGemma-2B (or 7B) shapes, in the Hugging Face layout.

Speed does not depend on weight values, so random weights give true timings. The tokenizer is
a synthetic 256000-piece SentencePiece model with Gemma's special tokens at Gemma's ids, so
every peer sees the real vocabulary size.

    python benchmarks/synthetic_model.py OUT_DIR [--preset codegemma-2b] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import json
import string
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from sentencepiece import sentencepiece_model_pb2 as spm_pb2

from codegemma.config import preset
from codegemma.model import GemmaForCausalLM

# Gemma's fixed ids (../shared/reference/formats.md); the gaps hold unused user tokens.
SPECIAL = {
    0: "<pad>",
    1: "<eos>",
    2: "<bos>",
    3: "<unk>",
    4: "<mask>",
    67: "<|fim_prefix|>",
    68: "<|fim_middle|>",
    69: "<|fim_suffix|>",
    70: "<|file_separator|>",
    106: "<start_of_turn>",
    107: "<end_of_turn>",
}
FIRST_BYTE_ID = 217  # byte pieces follow the special and unused tokens, as in Gemma


def synthetic_tokenizer(vocab_size: int) -> bytes:
    """A serialized SentencePiece BPE model with Gemma's settings and `vocab_size` pieces."""
    proto = spm_pb2.ModelProto()
    proto.trainer_spec.model_type = spm_pb2.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = vocab_size
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.split_digits = True
    proto.trainer_spec.pad_id, proto.trainer_spec.eos_id = 0, 1
    proto.trainer_spec.bos_id, proto.trainer_spec.unk_id = 2, 3
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    kinds = spm_pb2.ModelProto.SentencePiece
    pieces: list[tuple[str, int]] = []
    for i in range(FIRST_BYTE_ID):
        text = SPECIAL.get(i, f"<unused{i}>")
        kind = kinds.CONTROL if i in (0, 1, 2) else kinds.UNKNOWN if i == 3 else kinds.USER_DEFINED
        pieces.append((text, kind))
    pieces += [(f"<0x{b:02X}>", kinds.BYTE) for b in range(256)]
    for text in _words():
        if len(pieces) == vocab_size:
            break
        pieces.append((text, kinds.NORMAL))
    for rank, (text, kind) in enumerate(pieces):
        piece = proto.pieces.add()
        piece.piece, piece.type = text, kind
        piece.score = 0.0 if kind != kinds.NORMAL else -float(rank)
    return proto.SerializeToString()


def _words():
    letters = string.ascii_letters + string.digits + "_"
    yield from ("\u2581", *letters, *(f"\u2581{c}" for c in letters))
    for length in itertools.count(2):
        for combo in itertools.product(string.ascii_lowercase, repeat=length):
            word = "".join(combo)
            yield word
            yield "\u2581" + word


def write_model(out: Path, preset_name: str, seed: int) -> Path:
    """Write config.json, model.safetensors (bf16) and tokenizer.model; reuse an existing one."""
    config = preset(preset_name)
    if (out / "model.safetensors").exists() and (out / "tokenizer.model").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in GemmaForCausalLM(config).named_parameters()}
    tensors = {}
    for name, shape in shapes.items():
        std = 0.1 if name.endswith("norm.weight") else shape[-1] ** -0.5
        tensors[name] = (torch.randn(shape, generator=generator) * std).to(torch.bfloat16)
        print(f"\r{name:60s}", end="", file=sys.stderr)
    print(file=sys.stderr)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
    (out / "tokenizer.model").write_bytes(synthetic_tokenizer(config.vocab_size))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--preset", default="codegemma-2b")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_model(args.out, args.preset, args.seed))


if __name__ == "__main__":
    main()
