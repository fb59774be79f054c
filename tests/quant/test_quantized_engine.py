"""Quantized and native-kernel engines against the plain float32 path."""

import json
import shutil

import pytest
import torch

import codegemma
from codegemma.cli import main
from codegemma.errors import CheckpointError, InvalidRequestError
from codegemma.quant.apply import quantizable
from codegemma.quant.blocks import Int4Blocks, Int8Blocks
from codegemma.quant.mapped_pages import FileMappings
from codegemma.quant.row_groups import RowGroups

HELD_OUT = (
    "def main():\n    total = 0\n    for i in range(10):\n        total += i\n    print(total)\n"
)


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.fixture(scope="module")
def reference(trained_checkpoint):
    lm = codegemma.load(trained_checkpoint, dtype="float32", kernels="torch")
    ids = lm.tokenizer.encode(HELD_OUT)
    return ids, lm.logits(ids)


@pytest.mark.parametrize("mode, bound", [("int8", 0.999), ("int4", 0.99)])
def test_quantized_logits_stay_close(trained_checkpoint, reference, mode, bound):
    ids, expected = reference
    lm = codegemma.load(trained_checkpoint, quantize=mode)
    assert lm.weights == mode
    assert cosine(lm.logits(ids), expected) >= bound


@pytest.mark.parametrize("mode", [None, "int8", "int4"])
def test_native_decode_step_matches_plain_path(trained_checkpoint, mode):
    native = codegemma.load(trained_checkpoint, quantize=mode, kernels="native")
    plain = codegemma.load(trained_checkpoint, quantize=mode, kernels="torch")
    plain.model.compute_dtype = torch.float32  # same activation dtype as the native path
    assert native.acceleration.kernels == "native"
    token = torch.tensor([[native.tokenizer.encode("def")[1]]])  # one token: the decode path
    with torch.no_grad():
        got, expected = native.model(token)[0, 0], plain.model(token)[0, 0]
    assert cosine(got, expected) >= (0.99999 if mode is None else 0.9995)


@pytest.mark.parametrize("mode", [None, "int8", "int4"])
def test_native_prompt_path_matches_plain_path_and_gives_back_the_threads(
    trained_checkpoint, reference, mode
):
    # A whole prompt at once: GEMMs on widened weights with PyTorch on every kernel thread,
    # then one PyTorch thread again for the decode steps that follow.
    ids, expected = reference
    native = codegemma.load(trained_checkpoint, quantize=mode, kernels="native", threads=2)
    assert torch.get_num_threads() == 1
    seen = []
    layer = native.model.model.layers[0]
    hook = layer.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    got = native.logits(ids)
    hook.remove()
    assert seen == [2] and torch.get_num_threads() == 1
    assert cosine(got, expected) >= {None: 0.9999, "int8": 0.999, "int4": 0.99}[mode]


@pytest.mark.parametrize("mode", [None, "int8", "int4"])
def test_native_batches_equal_single_runs(trained_checkpoint, mode):
    lm = codegemma.load(trained_checkpoint, quantize=mode)
    prompts = ["def f(x):", "import os\nimport sys\n", "class Cache:\n    def get(self"]
    together = lm.generate(prompts, max_new_tokens=12)
    alone = [lm.generate(p, max_new_tokens=12) for p in prompts]
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_command_writes_a_checkpoint_that_loads_as_quantized(
    capsys, trained_checkpoint, tmp_path, bits
):
    out = tmp_path / f"q{bits}"
    assert main(["quantize", str(trained_checkpoint), str(out), "--bits", str(bits)]) == 0
    mode = f"int{bits}"
    assert json.loads((out / "config.json").read_text())["quantization"]["mode"] == mode
    saved = codegemma.load(out)
    assert saved.weights == mode and any("blocks" in n for n in saved.notes)
    at_load = codegemma.load(trained_checkpoint, quantize=mode)
    ids = saved.tokenizer.encode(HELD_OUT)
    assert torch.equal(saved.logits(ids), at_load.logits(ids))
    size = (out / "model.safetensors").stat().st_size
    assert size < 0.5 * (trained_checkpoint / "model.safetensors").stat().st_size
    assert main(["quantize", str(trained_checkpoint), str(out), "--bits", "8"]) == 1  # not empty
    assert "not empty" in capsys.readouterr().err


def test_broken_quantized_checkpoint_is_named(trained_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "q8"
    assert main(["quantize", str(trained_checkpoint), str(out), "--bits", "8"]) == 0
    tensors = load_file(str(out / "model.safetensors"))
    del tensors["model.layers.0.mlp.up_proj.weight.scales"]
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="up_proj.weight.groups.*scales"):
        codegemma.load(out)


@pytest.fixture(scope="module", params=["int8", "int4"])
def quantized_dir(request, trained_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantized") / request.param
    assert main(["quantize", str(trained_checkpoint), str(out), "--bits", request.param[3:]]) == 0
    return out, request.param


def _distinct_weights(lm) -> list:
    return list({id(m.weight): m.weight for _, m in quantizable(lm.model)}.values())


def test_quantized_checkpoint_is_read_in_place_in_row_groups(quantized_dir):
    out, mode = quantized_dir
    info = json.loads((out / "config.json").read_text())["quantization"]
    assert info["layout"] == "row-groups"
    lm = codegemma.load(out, kernels="native")
    weights = _distinct_weights(lm)
    if not lm.acceleration.native.row_groups:  # a CPU without byte dot products: rows
        assert all(isinstance(w, (Int8Blocks, Int4Blocks)) for w in weights)
        return
    assert lm.acceleration.regrouped == 0 and "read in place" in lm.acceleration.note
    mapped = FileMappings()
    for weight in weights:
        assert isinstance(weight, RowGroups)
        begin = weight.values.data_ptr()
        assert mapped.is_mapped(begin, begin + weight.values.numel())  # the file, not a copy
        assert begin % 64 == 0
    assert {w.bits for w in weights} == ({8} if mode == "int8" else {8, 4})  # int4: 8-bit head


def test_quantized_checkpoint_on_the_plain_path_equals_quantizing_at_load(
    quantized_dir, trained_checkpoint
):
    out, mode = quantized_dir
    saved = codegemma.load(out, kernels="torch")
    assert all(isinstance(w, (Int8Blocks, Int4Blocks)) for w in _distinct_weights(saved))
    at_load = codegemma.load(trained_checkpoint, quantize=mode, kernels="torch")
    ids = saved.tokenizer.encode(HELD_OUT)
    assert torch.equal(saved.logits(ids), at_load.logits(ids))


def test_checkpoint_in_rows_from_earlier_versions_still_loads(
    quantized_dir, trained_checkpoint, tmp_path
):
    # the layout `codegemma quantize` wrote before row groups: W.qs / W.q4 + 2-D W.scales
    from safetensors.torch import save_file

    out, mode = quantized_dir
    plain = codegemma.load(out, kernels="torch")
    tensors = {name: p.detach() for name, p in plain.model.named_parameters()}
    for name, module in quantizable(plain.model):
        weight = module.weight
        if isinstance(weight, Int8Blocks):
            tensors[f"{name}.weight.qs"] = weight.qs.contiguous()
        else:
            tensors[f"{name}.weight.q4"] = weight.packed.contiguous()
        tensors[f"{name}.weight.scales"] = weight.scales.contiguous()
    old = tmp_path / "rows"
    shutil.copytree(out, old)
    config = json.loads((old / "config.json").read_text())
    del config["quantization"]["layout"]
    (old / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(old / "model.safetensors"))
    loaded, current = codegemma.load(old), codegemma.load(out)
    if loaded.acceleration.kernels == "native" and loaded.acceleration.native.row_groups:
        assert loaded.acceleration.regrouped == len(_distinct_weights(loaded))
    ids = loaded.tokenizer.encode(HELD_OUT)
    assert torch.equal(loaded.logits(ids), current.logits(ids))


@pytest.mark.parametrize("bits", [8, 4])
def test_weights_whose_rows_do_not_group_are_stored_in_rows(tiny_tokenizer_dir, tmp_path, bits):
    # 520 embedding rows (not a multiple of 16) stay in rows; the layers are in row groups
    from tiny_models import make_checkpoint

    from codegemma.checkpoint.safetensors_file import read_header

    source = make_checkpoint(tmp_path / "source", tiny_tokenizer_dir, 520)
    out = tmp_path / "quantized"
    assert main(["quantize", str(source), str(out), "--bits", str(bits)]) == 0
    stored = read_header(out / "model.safetensors")[0]
    assert "model.embed_tokens.weight.qs" in stored  # the head stays 8-bit in int4 files too
    assert "model.layers.1.mlp.down_proj.weight.groups" in stored
    saved = codegemma.load(out)
    at_load = codegemma.load(source, quantize=f"int{bits}")
    ids = saved.tokenizer.encode(HELD_OUT)
    assert torch.equal(saved.logits(ids), at_load.logits(ids))


@pytest.mark.parametrize("kind, bits", [("q8_0", 8), ("q4_0", 4), ("f16", 8)])
def test_quantize_keeps_the_blocks_of_a_gguf_file(trained_checkpoint, tmp_path, kind, bits):
    # Q8_0 / Q4_0 blocks copied exactly (only laid out in row groups), so the result computes
    # what the GGUF file computes, and loads in place; F16 weights are quantized as usual
    from codegemma.gguf.writer import write_gguf

    gguf = write_gguf(trained_checkpoint, tmp_path / f"m-{kind}.gguf", kind)
    out = tmp_path / "quantized"
    assert main(["quantize", str(gguf), str(out), "--bits", str(bits)]) == 0
    saved = codegemma.load(out)
    assert saved.weights == f"int{bits}" and saved.acceleration.regrouped == 0
    reference = codegemma.load(gguf, quantize=None if kind != "f16" else f"int{bits}")
    ids = reference.tokenizer.encode(HELD_OUT)
    assert saved.tokenizer.encode(HELD_OUT) == ids
    assert torch.equal(saved.logits(ids), reference.logits(ids))


def test_quantize_refuses_to_requantize_blocks_to_other_bits(capsys, trained_checkpoint, tmp_path):
    from codegemma.gguf.writer import write_gguf

    gguf = write_gguf(trained_checkpoint, tmp_path / "m.gguf", "q4_0")
    assert main(["quantize", str(gguf), str(tmp_path / "q8"), "--bits", "8"]) == 1
    message = capsys.readouterr().err
    assert "4-bit blocks" in message and "--bits 4" in message


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t, k: t.__setitem__(k, t[k].flatten(3)), "row groups must be"),
        (
            lambda t, k: t.__setitem__(k[:-6] + "scales", t[k[:-6] + "scales"][:, :1].clone()),
            "scales",
        ),
    ],
)
def test_mis_shaped_row_groups_are_named(quantized_dir, tmp_path, change, message):
    from safetensors.torch import load_file, save_file

    out, _ = quantized_dir
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    tensors = load_file(str(broken / "model.safetensors"))
    change(tensors, "model.layers.0.mlp.down_proj.weight.groups")
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"down_proj.weight'.*{message}"):
        codegemma.load(broken)


def test_kernel_choice_is_explicit_and_falls_back(trained_checkpoint, tmp_path, monkeypatch):
    assert codegemma.load(trained_checkpoint, kernels="torch").acceleration.kernels == "torch"
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.raises(InvalidRequestError, match="native kernels unavailable"):
        codegemma.load(trained_checkpoint, kernels="native")
    fallback = codegemma.load(trained_checkpoint, kernels="auto")
    assert fallback.acceleration.kernels == "torch"
    assert "unavailable" in fallback.acceleration.note
    with pytest.raises(InvalidRequestError):
        codegemma.load(trained_checkpoint, quantize="int3")
    with pytest.raises(InvalidRequestError):
        codegemma.load(trained_checkpoint, threads=0)


@pytest.mark.parametrize("bits", [8, 4])
def test_prompts_on_weight_bytes_equal_their_rows_and_stay_near_widening(bits):
    # Row groups: prompt GEMMs run on the weight bytes (`byte_gemm`); the MLP's gated hidden
    # state is exactly the two projections and the product, each prompt row exactly the
    # decode kernel's row, and the result close to widening the weights instead.
    from codegemma.quant.apply import quantize_weight
    from codegemma.quant.backends import NativeBackend
    from codegemma.quant.native import NativeKernels
    from codegemma.quant.row_groups import regroup

    kernels = NativeKernels(2)
    try:
        backend = NativeBackend(kernels, fast_bf16_gemm=False)
        g = torch.Generator().manual_seed(bits)
        gate = regroup(quantize_weight(torch.randn(3008, 1024, generator=g) / 32, bits))
        up = regroup(quantize_weight(torch.randn(3008, 1024, generator=g) / 32, bits))
        x = torch.randn(2, 19, 1024, generator=g)
        assert backend.fuses_mlp(x, gate, up)  # on the bytes, even without bf16 GEMMs
        fused = backend.gated_hidden(x, gate, up)  # two slices of rows
        gelu = torch.nn.functional.gelu(backend.linear(x, gate), approximate="tanh")
        assert torch.equal(fused, gelu * backend.linear(x, up))
        assert torch.equal(backend.linear(x, gate)[1, 4], kernels.matvec(x[1, 4:5], gate)[0])
        # the whole MLP rounds each slice of the hidden state as it is made: the same numbers
        down = regroup(quantize_weight(torch.randn(1024, 3008, generator=g) / 55, bits))
        mlp = backend.gated_mlp(x, gate, up, down)
        assert torch.equal(mlp, backend.linear(fused, down))
        backend = NativeBackend(kernels, fast_bf16_gemm=False, byte_gemm=False)  # widened, f32
        assert not backend.fuses_mlp(x, gate, up)
        widened = torch.nn.functional.gelu(backend.linear(x, gate), approximate="tanh")
        assert cosine(fused, widened * backend.linear(x, up)) >= 0.9999
    finally:
        kernels.close()


@pytest.mark.parametrize("bits", [8, 4])
def test_fused_gated_hidden_equals_two_linears_and_the_product(bits):
    # The prompt-path MLP builds gelu(gate x) * up x slice by slice in bfloat16; it must give
    # exactly what the two projections and the product give, rounded as the next GEMM rounds.
    from codegemma.quant.apply import quantize_weight
    from codegemma.quant.backends import NativeBackend
    from codegemma.quant.native import NativeKernels

    kernels = NativeKernels(2)
    try:
        backend = NativeBackend(kernels, fast_bf16_gemm=True)  # (blocks: widened, bf16)
        g = torch.Generator().manual_seed(bits)
        gate = quantize_weight(torch.randn(3000, 1024, generator=g) / 32, bits)  # 2 slices
        up = quantize_weight(torch.randn(3000, 1024, generator=g) / 32, bits)
        x = torch.randn(2, 19, 1024, generator=g)
        assert backend.fuses_mlp(x, gate, up) and not backend.fuses_mlp(x[:, :1], gate, up)
        fused = backend.gated_hidden(x, gate, up)
        gelu = torch.nn.functional.gelu(backend.linear(x, gate), approximate="tanh")
        assert torch.equal(fused, (gelu * backend.linear(x, up)).bfloat16())
    finally:
        kernels.close()
