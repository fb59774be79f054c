"""Loading checkpoints: memory-mapped, strict about every key and shape, clear about problems."""

import json
import mmap
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import codegemma
from codegemma.checkpoint.assign import assign_weights
from codegemma.checkpoint.hf_dir import load_hf_weights
from codegemma.checkpoint.hub import resolve_model_dir
from codegemma.checkpoint.safetensors_file import ALIGNMENT, load_mapped, read_header, save_aligned
from codegemma.errors import CheckpointError, ModelNotFoundError
from codegemma.model import GemmaForCausalLM


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def rewrite_weights(directory, change):
    tensors = {k: v.clone() for k, v in load_mapped(directory / "model.safetensors").items()}
    change(tensors)
    save_file(tensors, str(directory / "model.safetensors"))


def test_weights_are_views_of_the_file_not_copies(mqa_checkpoint):
    state = load_hf_weights(mqa_checkpoint)
    config = codegemma.GemmaConfig.from_json_file(mqa_checkpoint / "config.json")
    with torch.device("meta"):
        model = GemmaForCausalLM(config)
    assign_weights(model, state, torch.float32, torch.device("cpu"))
    for name, param in model.named_parameters():
        assert param.data_ptr() == state[name].data_ptr(), name


def test_aligned_files_start_every_tensor_on_a_boundary_and_stay_valid(tmp_path):
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "odd.bytes": torch.randint(0, 255, (3,), dtype=torch.uint8, generator=generator),
        "groups": torch.randint(0, 255, (2, 3, 8, 16, 4), dtype=torch.uint8, generator=generator),
        "scales": torch.randn(2, 3, 16, generator=generator).to(torch.float16),
        "norm": torch.randn(5, generator=generator).to(torch.bfloat16),
        "mask": torch.tensor([True, False, True]),
        "wide": torch.randn(4, 16, generator=generator),
        "empty": torch.empty(0, 4),
    }
    path = tmp_path / "aligned.safetensors"
    save_aligned(tensors, path, metadata={"format": "pt"})
    header, data_start = read_header(path)
    assert data_start % ALIGNMENT == 0
    for name, tensor in tensors.items():
        if tensor.numel() * tensor.element_size() % ALIGNMENT == 0:
            assert header[name]["data_offsets"][0] % ALIGNMENT == 0, name
    mapped = load_mapped(path)
    assert mapped["groups"].data_ptr() % ALIGNMENT == 0
    reference = load_file(str(path))  # the safetensors library's own checks (no gaps, order)
    for name, tensor in tensors.items():
        assert torch.equal(mapped[name], tensor) and torch.equal(reference[name], tensor), name


def _mapping_flags(path) -> list[str]:
    """VmFlags of this process's mappings of `path` (Linux /proc/self/smaps)."""
    flags, current = [], None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's first line
                current = fields[5] if len(fields) > 5 else None
            elif fields[0] == "VmFlags:" and current == str(path):
                flags.append(fields[1:])
    return flags


@pytest.mark.skipif(
    not hasattr(mmap, "MADV_HUGEPAGE") or not os.path.exists("/proc/self/smaps"),
    reason="needs Linux madvise and /proc",
)
def test_checkpoint_maps_ask_for_huge_pages(mqa_checkpoint):
    path = (mqa_checkpoint / "model.safetensors").resolve()
    tensors = load_mapped(path)
    flags = _mapping_flags(path)
    assert flags and all("hg" in f for f in flags)  # MADV_HUGEPAGE: 2 MB page-cache pieces
    del tensors


def test_sharded_checkpoint_loads_the_same(mqa_checkpoint, tmp_path):
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for name in ("config.json", "tokenizer.model"):
        shutil.copy(mqa_checkpoint / name, sharded / name)
    tensors = {k: v.clone() for k, v in load_mapped(mqa_checkpoint / "model.safetensors").items()}
    names = sorted(tensors)
    halves = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for shard, shard_names in halves.items():
        save_file({n: tensors[n] for n in shard_names}, str(sharded / shard))
        weight_map.update({n: shard for n in shard_names})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ids = [2, 10, 20, 30]
    a = codegemma.load(mqa_checkpoint, dtype="float32").logits(ids)
    b = codegemma.load(sharded, dtype="float32").logits(ids)
    assert torch.equal(a, b)


def test_optional_lm_head_and_padded_embedding_rows(mqa_checkpoint, tmp_path):
    directory = copy_checkpoint(mqa_checkpoint, tmp_path / "padded")

    def pad_rows(tensors):
        embed = tensors["model.embed_tokens.weight"]
        padded = torch.cat([embed, torch.zeros(128, embed.shape[1])])  # like Flax's 256128 rows
        tensors["model.embed_tokens.weight"] = padded
        tensors["lm_head.weight"] = padded.clone()

    rewrite_weights(directory, pad_rows)
    lm = codegemma.load(directory, dtype="float32")
    assert lm.config.vocab_size == lm.tokenizer.vocab_size + 128
    result = lm.generate("def", max_new_tokens=8)
    assert all(t < lm.tokenizer.vocab_size for t in result.token_ids)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda t: t.pop("model.layers.1.mlp.up_proj.weight"),
            "missing tensor.*layers.1.mlp.up_proj",
        ),
        (
            lambda t: t.update({"model.layers.9.extra.weight": torch.zeros(2)}),
            "unexpected tensor.*layers.9.extra",
        ),
        (
            lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": torch.zeros(64, 64)}),
            "k_proj.weight' has shape \\[64, 64\\], the config expects \\[32, 64\\]",
        ),
        (lambda t: t.update({"lm_head.weight": torch.zeros(3, 3)}), "lm_head.weight"),
    ],
)
def test_mismatched_checkpoints_name_the_tensor(mqa_checkpoint, tmp_path, change, message):
    directory = copy_checkpoint(mqa_checkpoint, tmp_path / "bad")
    rewrite_weights(directory, change)
    with pytest.raises(CheckpointError, match=message):
        codegemma.load(directory)


def test_truncated_file_is_reported(mqa_checkpoint, tmp_path):
    directory = copy_checkpoint(mqa_checkpoint, tmp_path / "truncated")
    path = directory / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated: tensor"):
        codegemma.load(directory)
    path.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="truncated"):
        codegemma.load(directory)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        codegemma.load(directory)


def test_missing_pieces_of_a_directory(mqa_checkpoint, tmp_path):
    directory = copy_checkpoint(mqa_checkpoint, tmp_path / "partial")
    (directory / "tokenizer.model").unlink()
    with pytest.raises(codegemma.CodeGemmaError, match="tokenizer"):
        codegemma.load(directory)
    directory = copy_checkpoint(mqa_checkpoint, tmp_path / "noweights")
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        codegemma.load(directory)
    directory = copy_checkpoint(mqa_checkpoint, tmp_path / "noconfig")
    (directory / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        codegemma.load(directory)


def test_tokenizer_bigger_than_embedding_is_refused(mqa_checkpoint, tmp_path):
    directory = copy_checkpoint(mqa_checkpoint, tmp_path / "small")

    def shrink(tensors):
        tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"][:100].clone()

    rewrite_weights(directory, shrink)
    with pytest.raises(CheckpointError, match="does not belong"):
        codegemma.load(directory)


def test_unknown_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        codegemma.load(tmp_path / "nowhere")


def test_offline_hub_id_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(ModelNotFoundError) as info:
        codegemma.load("google/codegemma-2b")
    message = str(info.value)
    assert "hf download google/codegemma-2b" in message
    assert str(tmp_path / "hf" / "hub" / "models--google--codegemma-2b") in message
    assert "offline" in message


def test_hub_id_resolves_from_the_local_cache_offline(mqa_checkpoint, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    repo = cache / "models--google--codegemma-2b"
    snapshot = repo / "snapshots" / ("a" * 40)
    shutil.copytree(mqa_checkpoint, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert resolve_model_dir("google/codegemma-2b") == snapshot
    assert codegemma.load("google/codegemma-2b").tokenizer.vocab_size > 0
