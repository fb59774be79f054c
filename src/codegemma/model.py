"""The Gemma v1 decoder (CodeGemma) as plain PyTorch modules.

Parameter names equal Hugging Face's `GemmaForCausalLM`, so its safetensors load without a
name table. Shapes: B batch, T new tokens, S cached slots, D hidden, H query heads, KV key/value
heads, hd head_dim, V vocabulary rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from codegemma.config import GemmaConfig
from codegemma.kv_cache import KVCache


class Linear(nn.Module):
    """A bias-free linear layer whose weight may be a tensor or a block-quantized weight.

    It is exactly `F.linear`; an engine may swap in a subclass that runs faster kernels (see
    quant/layers.py, tested against this plain path).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, dense(self.weight, x.dtype))


def dense(weight, dtype: torch.dtype) -> torch.Tensor:
    """The weight as a tensor of `dtype`; a quantized one through its slow, obviously-right
    `dequantize`."""
    if not isinstance(weight, torch.Tensor):
        return weight.dequantize(dtype)
    return weight.to(dtype)


class Embedding(nn.Module):
    """Token embedding that is also the (tied) LM head; the weight may be block-quantized."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        # uninitialised, as Linear's: loaders assign weights and creators initialise them (a
        # random fill on the meta device would import torch._dynamo: ~70 MB of memory)
        self.weight = nn.Parameter(torch.empty(num_embeddings, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if isinstance(self.weight, torch.Tensor):
            return F.embedding(ids, self.weight)
        return self.weight.take_rows(ids.flatten()).view(*ids.shape, -1)  # (B, T, D) float32

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """LM-head logits x @ E^T."""
        return F.linear(x, dense(self.weight, x.dtype))


class RMSNorm(nn.Module):
    """RMSNorm that scales by (1 + w); computed in float32 and cast back, as the reference does."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).type_as(x)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (B, 1, T, hd) for integer positions (B, T), computed in float32."""
    inv_freq = 1.0 / (
        theta
        ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float) / head_dim)
    )  # (hd/2,)
    freqs = positions[..., None].float() * inv_freq  # (B, T, hd/2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (B, T, hd)
    return angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, heads, T, hd) by the half-split ("rotate_half") convention."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Multi-query or multi-head self-attention with rotary positions."""

    def __init__(self, config: GemmaConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.theta = config.rope_theta
        self.q_proj = Linear(config.hidden_size, config.q_width)
        self.k_proj = Linear(config.hidden_size, config.kv_width)
        self.v_proj = Linear(config.hidden_size, config.kv_width)
        self.o_proj = Linear(config.q_width, config.hidden_size)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        caches: Sequence[KVCache] | None,
        layer: int,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B,H,T,hd)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if caches is None:  # the T tokens are the whole sequence
            out = self._attend(q, k, v, None, causal=T > 1)
        else:  # each row after its own cache: attention row by row
            out = torch.cat(
                [
                    self._attend_cached(q[b : b + 1], k[b], v[b], c, layer)
                    for b, c in enumerate(caches)
                ]
            )  # (B, H, T, hd)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))

    def _attend_cached(self, q, k, v, cache: KVCache, layer: int) -> torch.Tensor:
        """q (1, H, T, hd) after the cache's `length` slots; k, v (KV, T, hd) are written there
        first. -> (1, H, T, hd)"""
        start, T = cache.length, q.shape[2]
        keys, values = cache.write(layer, start, k, v)  # (KV, S, hd), S = start + T
        mask = None
        if start > 0 and T > 1:  # a chunk after cached tokens: causal, offset by `start`
            slots = torch.arange(start + T, device=q.device)
            mask = slots[None, :] <= slots[start:, None]  # (T, S)
        return self._attend(q, keys[None], values[None], mask, causal=start == 0 and T > 1)

    def _attend(self, q, k, v, mask, causal: bool) -> torch.Tensor:
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=causal,
            scale=self.head_dim**-0.5,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )  # (B, H, T, hd)


class MLP(nn.Module):
    """GeGLU feed-forward: down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, config: GemmaConfig) -> None:
        super().__init__()
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))
        # inference: activation and product in place, two (B, T, intermediate) buffers fewer
        hidden = torch.ops.aten.gelu_(self.gate_proj(x), approximate="tanh")
        return self.down_proj(hidden.mul_(self.up_proj(x)))


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GemmaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, rope, caches, layer):
        x = x + self.self_attn(self.input_layernorm(x), rope, caches, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


def token_positions(
    caches: Sequence[KVCache] | None, shape: torch.Size, device: torch.device
) -> torch.Tensor:
    """Rotary positions (B, T) of T new tokens per row: after each row's cached tokens."""
    B, T = shape
    steps = torch.arange(T, device=device)  # (T,)
    if caches is None:
        return steps.expand(B, T)
    starts = torch.tensor([c.length for c in caches], device=device)  # (B,)
    return starts[:, None] + steps[None, :]


class GemmaModel(nn.Module):
    """Embedding, decoder stack and final norm (HF name: `model`)."""

    def __init__(self, config: GemmaConfig) -> None:
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class GemmaForCausalLM(nn.Module):
    """Gemma v1 decoder with the LM head tied to the embedding."""

    def __init__(self, config: GemmaConfig) -> None:
        super().__init__()
        self.config = config
        self.model = GemmaModel(config)
        # Activations (and the KV cache) use the weights' dtype unless an engine asks for
        # another, e.g. float32 when its kernels widen bfloat16 or int8 weights in registers.
        self.compute_dtype: torch.dtype | None = None

    @property
    def activation_dtype(self) -> torch.dtype:
        """The dtype of hidden states and of the KV cache."""
        if self.compute_dtype is not None:
            return self.compute_dtype
        weight = self.model.embed_tokens.weight
        return weight.dtype if isinstance(weight, torch.Tensor) else torch.float32

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        caches: Sequence[KVCache] | None = None,
        logits_positions: torch.Tensor | slice | None = None,
    ) -> torch.Tensor:
        """Logits (B, P, V) for new tokens `input_ids` (B, T).

        With `caches` (one per row), row b's tokens follow what caches[b] holds (positions
        from its length on) and their keys and values are written to it; without, the T
        tokens are a whole sequence (scoring, training). `logits_positions` picks which of the
        T positions get LM-head logits (default: the last only); the (V x D) head dominates
        all other positions.
        """
        if caches is not None and len(caches) != input_ids.shape[0]:
            raise ValueError(f"{input_ids.shape[0]} rows of tokens for {len(caches)} caches")
        positions = token_positions(caches, input_ids.shape, input_ids.device)
        x = self.embed(input_ids)  # (B, T, D)
        rope = self.rope(positions)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, rope, caches, i)
        for cache in caches or ():
            cache.length += input_ids.shape[1]
        return self.head(x, logits_positions)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, T, D) after the final norm of a whole sequence `input_ids`
        (B, T), without the LM head (embeddings are pooled from these)."""
        positions = token_positions(None, input_ids.shape, input_ids.device)
        x = self.embed(input_ids)  # (B, T, D)
        rope = self.rope(positions)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, rope, None, i)
        return self.model.norm(x)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Scaled token embeddings (B, T, D) in the activation dtype."""
        x = self.model.embed_tokens(input_ids).to(self.activation_dtype)  # (B, T, D)
        # The scale is rounded to the activation dtype first, as the reference does.
        return x * torch.tensor(math.sqrt(self.config.hidden_size), dtype=x.dtype)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin tables (B, 1, T, hd) for positions (B, T)."""
        config = self.config
        return rope_cos_sin(positions, config.head_dim, config.rope_theta, self.activation_dtype)

    def head(
        self, x: torch.Tensor, logits_positions: torch.Tensor | slice | None = None
    ) -> torch.Tensor:
        """LM-head logits (B, P, V) of the chosen positions of hidden states x (B, T, D)."""
        if logits_positions is None:
            logits_positions = slice(-1, None)
        x = x[:, logits_positions]  # (B, P, D)
        if x.shape[1] == 0:  # a prompt chunk whose logits nobody reads: skip the head
            return x.new_zeros(x.shape[0], 0, self.config.vocab_size)
        return self.model.embed_tokens.project(self.model.norm(x))  # (B, P, V)
