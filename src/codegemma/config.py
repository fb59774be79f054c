"""Model configuration: one dataclass for every Gemma v1 / CodeGemma variant."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from codegemma.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    """Shape and numeric settings of a Gemma v1 decoder."""

    vocab_size: int = 256000  # rows of the embedding (may exceed the tokenizer's size)
    hidden_size: int = 2048  # width of the residual stream
    intermediate_size: int = 16384  # width of the GeGLU feed-forward layer
    num_hidden_layers: int = 18  # number of decoder blocks
    num_attention_heads: int = 8  # query heads
    num_key_value_heads: int = 1  # key/value heads: 1 = multi-query, == heads = multi-head
    head_dim: int = 256  # per-head width; NOT hidden/heads in general (7B: 3072/16 != 256)
    max_position_embeddings: int = 8192  # context window in tokens
    rms_norm_eps: float = 1e-6  # epsilon inside RMSNorm
    rope_theta: float = 10000.0  # RoPE base frequency

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(
                    f"config field {field.name} must be a positive number, got {value!r}"
                )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    @property
    def q_width(self) -> int:
        """Width of the concatenated query heads."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Width of the concatenated key (or value) heads."""
        return self.num_key_value_heads * self.head_dim

    def replace(self, **changes: object) -> GemmaConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_dict(cls, raw: dict) -> GemmaConfig:
        """Build from a Hugging Face `config.json` dictionary of a Gemma v1 model."""
        model_type = raw.get("model_type", "gemma")
        if model_type != "gemma":
            raise CheckpointError(
                f"config.json has model_type {model_type!r}; codegemma runs Gemma v1 / CodeGemma "
                "checkpoints (model_type 'gemma')"
            )
        activation = raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh"
        if activation not in ("gelu_pytorch_tanh", "gelu"):
            raise CheckpointError(f"unsupported activation {activation!r} in config.json")
        rope = raw.get("rope_parameters") or {}
        values = {
            "vocab_size": raw.get("vocab_size"),
            "hidden_size": raw.get("hidden_size"),
            "intermediate_size": raw.get("intermediate_size"),
            "num_hidden_layers": raw.get("num_hidden_layers"),
            "num_attention_heads": raw.get("num_attention_heads"),
            "num_key_value_heads": raw.get("num_key_value_heads", raw.get("num_attention_heads")),
            "head_dim": raw.get("head_dim"),
            "max_position_embeddings": raw.get("max_position_embeddings", 8192),
            "rms_norm_eps": raw.get("rms_norm_eps", 1e-6),
            "rope_theta": rope.get("rope_theta", raw.get("rope_theta", 10000.0)),
        }
        missing = [name for name, value in values.items() if value is None]
        if missing:
            raise CheckpointError(f"config.json lacks required field(s): {', '.join(missing)}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid config.json: {exc}") from exc

    @classmethod
    def from_json_file(cls, path: str | Path) -> GemmaConfig:
        """Read a Hugging Face `config.json`."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CheckpointError(f"no config.json at {path}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path} must hold a JSON object")
        return cls.from_hf_dict(raw)

    def to_hf_dict(self) -> dict:
        """The Hugging Face `config.json` dictionary for this configuration."""
        return {
            "architectures": ["GemmaForCausalLM"],
            "model_type": "gemma",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_activation": "gelu_pytorch_tanh",
            "attention_bias": False,
            "tie_word_embeddings": True,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "bos_token_id": 2,
            "torch_dtype": "bfloat16",
        }


_GEMMA_2B = GemmaConfig()
_GEMMA_7B = GemmaConfig(
    hidden_size=3072,
    intermediate_size=24576,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=16,
    head_dim=256,
)

# Variants are data: the released CodeGemma checkpoints share two shapes.
PRESETS: dict[str, GemmaConfig] = {
    "codegemma-2b": _GEMMA_2B,
    "codegemma-1.1-2b": _GEMMA_2B,
    "codegemma-7b": _GEMMA_7B,
    "codegemma-7b-it": _GEMMA_7B,
    "codegemma-1.1-7b-it": _GEMMA_7B,
}


def preset(name: str) -> GemmaConfig:
    """The configuration of a released CodeGemma variant, by name (`google/` prefix optional)."""
    key = name.removeprefix("google/")
    if key not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[key]
