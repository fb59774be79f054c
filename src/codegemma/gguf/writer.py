"""Writing GGUF files from Hugging Face directories, and Hugging Face directories from GGUF.

The GGUF side follows llama.cpp's `convert_hf_to_gguf.py` for Gemma: the same metadata keys,
norms stored as 1 + w in F32, no `output.weight`, the SentencePiece vocabulary as token /
score / type arrays padded to the embedding's rows, and the special ids (BOS, EOS, UNK, PAD,
end of turn, FIM prefix / suffix / middle / file separator) found by their text. Tensors are
encoded and written one at a time, so memory stays near one tensor. The file is written under
a temporary name and renamed at the end: an interrupted run leaves no half-written model.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from codegemma.checkpoint.assign import assign_weights
from codegemma.checkpoint.hf_dir import load_hf_weights, save_hf_checkpoint
from codegemma.config import GemmaConfig
from codegemma.devices import DTYPES, dtype_name
from codegemma.errors import CheckpointError
from codegemma.gguf import names
from codegemma.gguf.dequant import dequantize
from codegemma.gguf.ggml_types import TYPES_BY_NAME
from codegemma.gguf.loader import ARCHITECTURE, FLOAT_TYPES, config_from_metadata, gemma_tensors
from codegemma.gguf.reader import GGUFFile, TensorInfo, read_gguf
from codegemma.gguf.tokenizer import (
    ID_KEYS,
    UNKNOWN,
    proto_from_metadata,
    vocabulary_from_proto,
)
from codegemma.model import GemmaForCausalLM
from codegemma.quant.blocks import quantize_int4, quantize_int8

# --type: the ggml type of 2-D weights, and llama.cpp's `general.file_type` for it.
FILE_TYPES: dict[str, tuple[str, int]] = {
    "f32": ("F32", 0),
    "f16": ("F16", 1),
    "bf16": ("BF16", 32),
    "q8_0": ("Q8_0", 7),
    "q4_0": ("Q4_0", 2),
}
_CHUNK_VALUES = 1 << 22  # values quantized or dequantized at a time


def write_gguf(model_dir: str | Path, out_path: str | Path, out_type: str = "f16") -> Path:
    """Write the Hugging Face directory `model_dir` as a GGUF file of type `out_type`."""
    gguf = _gguf_package()
    if out_type not in FILE_TYPES:
        choices = ", ".join(FILE_TYPES)
        raise CheckpointError(f"unknown GGUF type {out_type!r}; choose from {choices}")
    directory, out_path = Path(model_dir), Path(out_path)
    config, state = _hf_checkpoint(directory)
    proto = _sentencepiece_proto(directory)
    weight_type, file_type = FILE_TYPES[out_type]
    plan = [
        (gguf_name, tensor, _tensor_type(gguf_name, weight_type))
        for gguf_name, tensor in _gguf_tensors(state)
    ]
    partial = out_path.with_name(out_path.name + ".partial")
    writer = gguf.GGUFWriter(partial, ARCHITECTURE)
    try:
        _add_model_metadata(writer, gguf, config, directory.resolve().name, file_type)
        _add_tokenizer_metadata(writer, gguf, proto, config.vocab_size, directory)
        for gguf_name, tensor, kind in plan:
            shape, dtype, nbytes = _stored_layout(tensor.shape, kind)
            raw_type = None if kind in ("F32", "F16") else gguf.GGMLQuantizationType[kind]
            writer.add_tensor_info(gguf_name, shape, dtype, nbytes, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for gguf_name, tensor, kind in plan:
            writer.write_tensor_data(_encode(tensor, kind, names.is_norm(gguf_name)))
        writer.close()
        os.replace(partial, out_path)
    finally:
        writer.close()
        partial.unlink(missing_ok=True)
    return out_path


def write_hf(gguf_path: str | Path, out_dir: str | Path, dtype: str | None = None) -> list[str]:
    """Write a GGUF file as a Hugging Face directory (config.json, model.safetensors,
    tokenizer.model); returns notes on the tokenizer. `dtype` defaults to the file's float
    type, or bfloat16 for a quantized file."""
    file = read_gguf(gguf_path)
    config = config_from_metadata(file)
    proto, notes = proto_from_metadata(file.metadata, file.path)
    if len(proto.pieces) > config.vocab_size:
        raise CheckpointError(f"{file.path}: more tokens than token_embd.weight has rows")
    tensors, ignored = gemma_tensors(file)
    target = DTYPES[dtype] if dtype else _default_dtype(tensors.values())
    state = {hf: _float_tensor(file, info, target) for hf, info in tensors.items()}
    with torch.device("meta"):
        model = GemmaForCausalLM(config)
    assign_weights(model, state, target, torch.device("cpu"))
    save_hf_checkpoint(model, out_dir)
    (Path(out_dir) / "tokenizer.model").write_bytes(proto.SerializeToString())
    return ignored + notes + [f"weights written as {dtype_name(target)}"]


# ------------------------------------------------------------------------------ HF -> GGUF


def _gguf_package():
    try:
        import gguf  # extra 'gguf'
    except ImportError as exc:
        raise CheckpointError(
            "writing GGUF files needs the 'gguf' package (pip install gguf)"
        ) from exc
    return gguf


def _hf_checkpoint(directory: Path) -> tuple[GemmaConfig, dict[str, torch.Tensor]]:
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a Hugging Face model directory")
    config = GemmaConfig.from_json_file(directory / "config.json")
    state = load_hf_weights(directory)
    embedding = state.get("model.embed_tokens.weight")
    if embedding is not None and embedding.dim() == 2:
        config = config.replace(vocab_size=embedding.shape[0])
    # The engine's strict key and shape check, run on meta copies (no data is touched).
    with torch.device("meta"):
        model = GemmaForCausalLM(config)
    meta_state = {name: tensor.to("meta") for name, tensor in state.items()}
    assign_weights(model, meta_state, torch.float32, torch.device("meta"))
    return config, {name: state[name] for name, _ in model.named_parameters()}


def _sentencepiece_proto(directory: Path) -> model_pb2.ModelProto:
    path = directory / "tokenizer.model"
    if not path.is_file():
        raise CheckpointError(
            f"{directory} has no tokenizer.model; GGUF needs the SentencePiece vocabulary"
        )
    proto = model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError
        raise CheckpointError(f"{path} is not a SentencePiece model: {exc}") from exc
    return proto


def _gguf_tensors(state: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    for hf, tensor in state.items():
        gguf_name = names.gguf_name(hf)
        if gguf_name is None:
            raise CheckpointError(f"tensor {hf!r} has no GGUF name")
        yield gguf_name, tensor


def _tensor_type(gguf_name: str, weight_type: str) -> str:
    # As llama.cpp does: 1-D tensors (the norms) stay F32 whatever the file type.
    if names.is_norm(gguf_name):
        return "F32"
    # The embedding is also the (tied) output head, which llama.cpp's quantizer keeps at more
    # bits than Q4_0; Q8_0 there is also exactly what the engine's own int4 mode keeps.
    if gguf_name == "token_embd.weight" and weight_type == "Q4_0":
        return "Q8_0"
    return weight_type


def _stored_layout(shape: torch.Size, kind: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """The (shape, numpy dtype, byte count) GGUFWriter is given for a tensor of `kind`."""
    ggml_type = TYPES_BY_NAME[kind]
    nbytes = math.prod(shape) // ggml_type.block_size * ggml_type.type_size
    if kind in ("F32", "F16"):
        return tuple(shape), np.dtype(np.float32 if kind == "F32" else np.float16), nbytes
    rows = math.prod(shape[:-1])
    return (rows, nbytes // rows), np.dtype(np.uint8), nbytes


def _encode(tensor: torch.Tensor, kind: str, norm: bool) -> np.ndarray:
    if norm:
        return (tensor.float() + 1.0).numpy()
    if kind == "F32":
        return tensor.float().contiguous().numpy()
    if kind == "F16":
        return tensor.to(torch.float16).contiguous().numpy()
    if kind == "BF16":
        return tensor.to(torch.bfloat16).contiguous().view(torch.uint8).numpy()
    return _quantized_bytes(tensor, kind)


def _quantized_bytes(tensor: torch.Tensor, kind: str) -> np.ndarray:
    """Rows of Q8_0 / Q4_0 blocks: each block's float16 scale, then its values."""
    rows, width = tensor.shape
    step = max(1, _CHUNK_VALUES // width)
    parts = []
    for start in range(0, rows, step):
        chunk = tensor[start : start + step]
        if kind == "Q8_0":
            blocks = quantize_int8(chunk)
            values = blocks.qs.view(torch.uint8)
        else:
            blocks = quantize_int4(chunk)
            values = blocks.packed
        count, n_blocks = blocks.scales.shape
        scales = blocks.scales.to(torch.float16).view(torch.uint8).view(count, n_blocks, 2)
        data = values.reshape(count, n_blocks, -1)
        parts.append(torch.cat((scales, data), dim=-1).view(count, -1))
    return torch.cat(parts).numpy()


def _add_model_metadata(writer, gguf, config: GemmaConfig, name: str, file_type: int) -> None:
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    if config.rope_theta != 10000.0:  # llama.cpp's default for gemma; written only if not
        writer.add_rope_freq_base(config.rope_theta)


def _add_tokenizer_metadata(
    writer, gguf, proto: model_pb2.ModelProto, rows: int, directory: Path
) -> None:
    if len(proto.pieces) > rows:
        raise CheckpointError(
            f"tokenizer.model has {len(proto.pieces)} pieces but the embedding has {rows} rows"
        )
    vocabulary = vocabulary_from_proto(proto, rows)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocabulary.tokens)
    writer.add_token_scores(vocabulary.scores.tolist())
    writer.add_token_types(vocabulary.types.tolist())
    ids = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    for key, text in ID_KEYS.items():
        token = ids.get(text)
        if key == "tokenizer.ggml.unknown_token_id":
            token = next((i for i, p in enumerate(proto.pieces) if p.type == UNKNOWN), token)
        if token is not None:
            writer.add_uint32(key, token)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    template = _chat_template(directory)
    if template:
        writer.add_chat_template(template)


def _chat_template(directory: Path) -> str | None:
    path = directory / "tokenizer_config.json"
    try:
        template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return None
    return template if isinstance(template, str) else None


# ------------------------------------------------------------------------------ GGUF -> HF


def _default_dtype(infos) -> torch.dtype:
    kinds = {info.ggml_type.name for info in infos if len(info.shape) == 2}
    if kinds == {"F32"}:
        return torch.float32
    if kinds == {"F16"}:
        return torch.float16
    return torch.bfloat16


def _float_tensor(file: GGUFFile, info: TensorInfo, dtype: torch.dtype) -> torch.Tensor:
    """The tensor in `dtype` (norms as w), dequantized a chunk of rows at a time."""
    if names.is_norm(info.name):
        return (dequantize(file.raw(info), info.ggml_type).view(info.shape) - 1.0).to(dtype)
    if info.ggml_type.name in FLOAT_TYPES and file.float_tensor(info).dtype == dtype:
        return file.float_tensor(info)
    raw = file.raw(info)
    out = torch.empty(info.rows, info.shape[-1], dtype=dtype)
    step = max(1, _CHUNK_VALUES // info.shape[-1])
    for start in range(0, info.rows, step):
        out[start : start + step] = dequantize(raw[start : start + step], info.ggml_type)
    return out.view(info.shape)
