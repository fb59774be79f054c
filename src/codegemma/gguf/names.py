"""GGUF tensor names of architecture `gemma` and their Hugging Face equivalents."""

from __future__ import annotations

import re

# Tensors outside the decoder blocks.
GLOBAL_NAMES: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
}

# Per block N: `blk.N.<gguf>.weight` is `model.layers.N.<hf>.weight`.
LAYER_NAMES: dict[str, str] = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

# GGUF stores these RMSNorm weights as 1 + w (llama.cpp multiplies by the stored value);
# Hugging Face stores w and adds 1 at run time.
NORM_NAMES = frozenset({"output_norm.weight"} | {name for name in LAYER_NAMES if "norm" in name})

# Gemma ties the LM head to the embedding; llama.cpp ignores a separate output tensor.
IGNORED_NAMES = frozenset({"output.weight"})

_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.([\w.]+)\.weight")
_HF_TO_GGUF_LAYER = {hf: gguf for gguf, hf in LAYER_NAMES.items()}
_HF_TO_GGUF_GLOBAL = {hf: gguf for gguf, hf in GLOBAL_NAMES.items()}


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None if it is not a Gemma tensor."""
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    match = _LAYER.fullmatch(gguf_name)
    if match and match.group(2) in LAYER_NAMES:
        return f"model.layers.{int(match.group(1))}.{LAYER_NAMES[match.group(2)]}.weight"
    return None


def gguf_name(hf: str) -> str | None:
    """The GGUF name of a Hugging Face tensor, or None if it has none."""
    if hf in _HF_TO_GGUF_GLOBAL:
        return _HF_TO_GGUF_GLOBAL[hf]
    match = _HF_LAYER.fullmatch(hf)
    if match and match.group(2) in _HF_TO_GGUF_LAYER:
        return f"blk.{int(match.group(1))}.{_HF_TO_GGUF_LAYER[match.group(2)]}.weight"
    return None


def is_norm(gguf_name: str) -> bool:
    """Whether the GGUF tensor is an RMSNorm weight (stored as 1 + w)."""
    if gguf_name in NORM_NAMES:
        return True
    match = _LAYER.fullmatch(gguf_name)
    return bool(match) and match.group(2) in NORM_NAMES
