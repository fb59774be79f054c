"""What clients are told about the served model: its real parameter count, weight format,
memory and a content digest of its checkpoint (Ollama's `digest`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from codegemma.config import GemmaConfig
from codegemma.engine import CodeGemma
from codegemma.fim import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from codegemma.quant.apply import quantizable
from codegemma.quant.formats import is_quantized
from codegemma.serving.adapters import ModelInfo

_BLOCK = 8 << 20  # bytes hashed at a time


def model_info(lm: CodeGemma, name: str) -> ModelInfo:
    """What clients are told about `lm`, served under `name` (hashes its checkpoint once)."""
    tokenizer = lm.tokenizer
    return ModelInfo(
        name=name,
        context_length=lm.context_length,
        weights=lm.weights,
        parameters=parameter_count(lm.config),
        size_bytes=weight_bytes(lm),
        has_fim=all(
            tokenizer.token_id(t) is not None for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)
        ),
        digest=content_digest(lm),
        path=str(lm.path or ""),
        hidden_size=lm.config.hidden_size,
        vocab_size=lm.config.vocab_size,
    )


def parameter_count(config: GemmaConfig) -> int:
    """Parameters of the architecture (the LM head is the embedding), whatever their format."""
    d, heads, kv, hd = (
        config.hidden_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
    )
    attention = d * heads * hd * 2 + d * kv * hd * 2  # q, o; k, v
    layer = attention + 3 * d * config.intermediate_size + 2 * d  # MLP, two norms
    return config.vocab_size * d + config.num_hidden_layers * layer + d  # final norm


def weight_bytes(lm: CodeGemma) -> int:
    """Bytes of the weights in memory, quantized ones included."""
    tensors = [*lm.model.parameters(), *lm.model.buffers()]
    total = sum(t.numel() * t.element_size() for t in tensors)
    for _, module in quantizable(lm.model):
        weight = module.weight
        if is_quantized(weight):  # not a Parameter
            total += weight.nbytes
    return total


def content_digest(lm: CodeGemma) -> str:
    """ "sha256:<hex>" of the checkpoint's files (a GGUF file, or a directory's files), else of
    the weights in memory; the weight format is hashed too (quantized at load or not)."""
    digest = hashlib.sha256(lm.weights.encode())
    if lm.path is not None and Path(lm.path).exists():
        for file in _files(Path(lm.path)):
            digest.update(file.name.encode())
            with file.open("rb") as f:
                while block := f.read(_BLOCK):
                    digest.update(block)
    else:
        for key, tensor in sorted(lm.model.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
