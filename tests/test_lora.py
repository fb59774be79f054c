"""LoRA adapters: PEFT layout, round trip through `codegemma.load(adapter=...)`, PEFT itself."""

import json

import pytest
import torch

import codegemma
from codegemma.errors import CheckpointError
from codegemma.lora import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    LoraLinear,
    add_lora,
    apply_adapter,
    save_adapter,
)

TEXT = "def put(self, key, value):\n    self.items[key] = value\n"


def trained_adapter(checkpoint, directory, *, targets=("q_proj", "v_proj", "down_proj")):
    """An adapter whose B matrices are non-zero (a fresh one would change nothing)."""
    lm = codegemma.load(checkpoint, dtype="float32", kernels="torch")
    names = add_lora(lm.model, r=4, alpha=8.0, targets=targets)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in lm.model.modules():
            if isinstance(module, LoraLinear):
                module.lora_B.weight.copy_(
                    torch.randn(module.lora_B.weight.shape, generator=generator) * 0.05
                )
    save_adapter(lm.model, directory, base_model=str(checkpoint))
    ids = lm.tokenizer.encode(TEXT)
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids]), logits_positions=slice(None))[0]
    return names, ids, logits


def test_adapter_files_use_the_peft_layout(mqa_checkpoint, tmp_path):
    names, _, _ = trained_adapter(mqa_checkpoint, tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8.0
    assert config["target_modules"] == ["q_proj", "v_proj", "down_proj"]
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / WEIGHTS_FILE))
    assert len(names) == 2 * 3 and len(tensors) == 2 * len(names)
    a = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert a.shape == (4, 64) and b.shape == (4 * 32, 4)


@pytest.mark.parametrize("merge", [True, False])
def test_load_with_adapter_gives_the_trained_logits(mqa_checkpoint, tmp_path, merge):
    _, ids, expected = trained_adapter(mqa_checkpoint, tmp_path / "adapter")
    plain = codegemma.load(mqa_checkpoint, dtype="float32", kernels="torch").logits(ids)
    lm = codegemma.load(
        mqa_checkpoint,
        dtype="float32",
        kernels="torch",
        adapter=tmp_path / "adapter",
        merge_adapter=merge,
    )
    got = lm.logits(ids)
    assert (got - plain).abs().max() > 1e-2  # the adapter does something
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    wrapped = [m for m in lm.model.modules() if isinstance(m, LoraLinear)]
    assert len(wrapped) == (0 if merge else 6)


@pytest.mark.parity
def test_peft_reads_our_adapter_and_computes_the_same_logits(mqa_checkpoint, tmp_path):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    _, ids, expected = trained_adapter(mqa_checkpoint, tmp_path)
    base = transformers.GemmaForCausalLM.from_pretrained(
        mqa_checkpoint, dtype=torch.float32, attn_implementation="eager"
    )
    model = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(theirs, expected, rtol=1e-4, atol=1e-4)


def test_an_adapter_for_other_layers_is_an_error(mqa_checkpoint, tmp_path):
    trained_adapter(mqa_checkpoint, tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / WEIGHTS_FILE))
    renamed = {k.replace("layers.1.", "layers.9."): v for k, v in tensors.items()}
    save_file(renamed, str(tmp_path / WEIGHTS_FILE))
    lm = codegemma.load(mqa_checkpoint, dtype="float32", kernels="torch")
    with pytest.raises(CheckpointError, match="layers.9"):
        apply_adapter(lm.model, tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(CheckpointError, match="use_dora"):
        apply_adapter(lm.model, tmp_path)


def test_add_lora_trains_only_the_adapter(mqa_checkpoint):
    lm = codegemma.load(mqa_checkpoint, dtype="float32", kernels="torch")
    add_lora(lm.model, r=2, alpha=4.0)
    trainable = [n for n, p in lm.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * 7 * lm.config.num_hidden_layers
