"""Before/after check for refactors: logits of every load path x kernel setting, bit for bit.

    python benchmarks/logit_snapshot.py build DIR          # once, at the commit before a change
    python benchmarks/logit_snapshot.py run DIR OUT.pt     # with the code as checked out
    python benchmarks/logit_snapshot.py compare A.pt B.pt  # every tensor and token id equal?

`build` writes tiny models in every format the engine reads: a trained Hugging Face directory,
random multi-query and multi-head ones, GGUF files (F16, BF16, Q8_0, Q4_0), `codegemma quantize`
checkpoints (int8, int4, and int8 from the Q8_0 file), a keras-hub preset and a Flax checkpoint
(written by keras-hub and the `gemma` library themselves, when installed), Jlama directories
(Q4, I8) and a PEFT LoRA adapter. They are built once, so that later runs load the same files.
The builders import nothing from the tests (they repeat the tests' keras-hub and Flax builders
and tiny training loop): `build` must run on the commit before a change, whatever its tests
look like.

`run` loads each of them (and the shipped default model) under every setting: kernels "torch"
and "native", float32 and bfloat16, quantized at load or not, and on the native kernels the
fused decode step and the byte GEMM on and off (the OpenMP sharing both ways on one model).
For each it records the prompt logits (`logits()`), four batched decode steps after three
prompts (the engine's `decode`), the tokens of greedy and sampled generation and of FIM, and
embeddings. It also re-runs the writers (`convert`, `quantize`) into a scratch folder and
records a hash of every file they write. `compare` reports every difference (exit code 1 if
there is one).

Run both sides on the same machine with the same thread count (`--threads`, default 2).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

import codegemma
from codegemma.cli import main as cli

PROMPTS = ["def f(x):\n    return", "import os\n", "class Cache:\n    def get(self, key"]
LONG = (
    "import os\nfrom pathlib import Path\n\n\nclass Cache:\n    def __init__(self, capacity):\n"
    "        self.capacity = capacity\n        self.items = {}\n\n    def get(self, key):\n"
)
VOCAB = 512

# ----------------------------------------------------------------------------------- build


def build(root: Path) -> None:
    """Every fixture model under `root` (see the module docstring)."""
    from codegemma.random_model import DEMO_CONFIG, random_model, write_random_checkpoint
    from codegemma.tokenizer_training import train_tokenizer

    root.mkdir(parents=True, exist_ok=False)
    corpus = _corpus()
    tokenizer = train_tokenizer(corpus, root / "tokenizer" / "tokenizer.model", VOCAB)
    # 2 layers, 4 query heads of 32, one key/value head (multi-query), hidden size 64
    tiny = DEMO_CONFIG.replace(vocab_size=VOCAB, intermediate_size=128, max_position_embeddings=512)
    write_random_checkpoint(root / "mqa", tiny, tokenizer, seed=0)
    mha = tiny.replace(hidden_size=96, num_key_value_heads=4, head_dim=40)
    write_random_checkpoint(root / "mha", mha, tokenizer, seed=1)
    trained = tiny.replace(hidden_size=128, intermediate_size=256)
    _write_hf(_train(random_model(trained, seed=0), corpus, tokenizer), root / "trained")
    shutil.copyfile(tokenizer, root / "trained" / "tokenizer.model")
    for kind in ("f16", "bf16", "q8_0", "q4_0"):
        out = root / f"gguf-{kind}.gguf"
        _cli("convert", root / "trained", out, "--to", "gguf", "--type", kind)
    _cli("quantize", root / "trained", root / "quant-int8", "--bits", "8")
    _cli("quantize", root / "trained", root / "quant-int4", "--bits", "4")
    _cli("quantize", root / "gguf-q8_0.gguf", root / "quant-gguf-int8", "--bits", "8")
    _write_adapter(root / "adapter", trained)
    _write_jlama(root, tokenizer)
    _write_keras(root / "keras", tokenizer)
    _write_flax(root / "flax", tokenizer)
    print(f"built {sorted(p.name for p in root.iterdir())}")


def _corpus() -> list[str]:
    """Python source of this package's own oldest, stable modules (any text would do: the
    fixtures are built once)."""
    import codegemma.config
    import codegemma.model

    texts = [Path(m.__file__).read_text() for m in (codegemma.config, codegemma.model)]
    return [*texts, LONG, *PROMPTS] * 2


def _train(model, corpus: list[str], tokenizer_file: Path, steps: int = 150):
    """A few AdamW steps, so the logits have a trained model's spread."""
    from codegemma.tokenizer import Tokenizer

    ids = torch.tensor(Tokenizer.from_file(tokenizer_file).encode("".join(corpus)))
    generator = torch.Generator().manual_seed(0)
    model.train()
    for param in model.parameters():
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 65, (8,), generator=generator)
        batch = torch.stack([ids[s : s + 65] for s in starts])
        logits = model(batch[:, :-1], logits_positions=slice(None))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def _write_hf(model, directory: Path) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    config = json.dumps(model.config.to_hf_dict(), indent=2)
    (directory / "config.json").write_text(config + "\n")
    tensors = {n: p.detach().contiguous() for n, p in model.named_parameters()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def _write_adapter(directory: Path, config) -> None:
    """A PEFT LoRA adapter (rank 4) for the trained model's q and down projections."""
    from safetensors.torch import save_file

    directory.mkdir()
    generator = torch.Generator().manual_seed(3)
    tensors = {}
    for layer in range(config.num_hidden_layers):
        for name, (inp, out) in {
            "self_attn.q_proj": (config.hidden_size, config.q_width),
            "mlp.down_proj": (config.intermediate_size, config.hidden_size),
        }.items():
            key = f"base_model.model.model.layers.{layer}.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(4, inp, generator=generator) / 8
            tensors[f"{key}.lora_B.weight"] = torch.randn(out, 4, generator=generator) / 8
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    settings = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "down_proj"],
    }
    (directory / "adapter_config.json").write_text(json.dumps(settings))


def _write_jlama(root: Path, tokenizer: Path) -> None:
    """Jlama directories (Q4 with float32 norms, I8 with I8 norms) of the mqa model, written
    as Jlama's SafeTensorSupport does (own dtype names, unaligned float32 `.qb` scales)."""
    import numpy as np
    import transformers
    from safetensors import safe_open

    json_dir = root / "tokenizer-json"
    reference = transformers.GemmaTokenizer.from_pretrained(tokenizer.parent, add_bos_token=True)
    reference.save_pretrained(json_dir)
    with safe_open(root / "mqa" / "model.safetensors", "pt") as f:
        weights = {name: f.get_tensor(name).float().numpy() for name in f.keys()}
    for kind, norms in (("Q4", "F32"), ("I8", "I8")):
        directory = root / f"jlama-{kind}"
        directory.mkdir()
        tensors = {}
        for name, weight in weights.items():
            if weight.ndim == 1 and norms == "F32":
                tensors[name] = ("F32", weight.shape, weight.tobytes())
                continue
            blocks = weight.astype(np.float32).reshape(-1, 32)
            if kind == "I8":
                scale = (np.abs(blocks).max(axis=1) / 127.0).astype(np.float32)
                q = np.round(blocks / np.where(scale != 0, scale, 1)[:, None]).astype(np.int8)
                data = q.tobytes()
            else:
                pick = np.abs(blocks).argmax(axis=1)[:, None]
                scale = (np.take_along_axis(blocks, pick, axis=1)[:, 0] / -8.0).astype(np.float32)
                inverse = 1.0 / np.where(scale != 0, scale, 1)
                q = np.minimum(15, np.trunc(blocks * inverse[:, None] + 8.5)).astype(np.uint8)
                data = (q[:, :16] | (q[:, 16:] << 4)).tobytes()
            scales = scale.reshape(*weight.shape[:-1], -1)
            tensors[name] = (kind, weight.shape, data)
            tensors[name + ".qb"] = ("F32", scales.shape, scales.tobytes())
        header, offset, blobs = {}, 0, []
        for name, (dtype, shape, data) in reversed(tensors.items()):
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset]}
            header[name]["data_offsets"].append(offset + len(data))
            offset += len(data)
            blobs.append(data)
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (1 - len(raw) % 2)
        (directory / "model.safetensors").write_bytes(
            len(raw).to_bytes(8, "little") + raw + b"".join(blobs)
        )
        shutil.copyfile(root / "mqa" / "config.json", directory / "config.json")
        shutil.copyfile(json_dir / "tokenizer.json", directory / "tokenizer.json")


def _write_keras(directory: Path, tokenizer: Path) -> None:
    """A keras-hub preset written by keras-hub (torch backend), if it is installed."""
    import os

    import numpy as np

    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras_hub
    except ImportError:
        print("keras-hub is not installed: no keras preset", file=sys.stderr)
        return
    vocab = keras_hub.models.GemmaTokenizer(proto=str(tokenizer))
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=vocab.vocabulary_size(),
        num_layers=2,
        num_query_heads=4,
        num_key_value_heads=1,
        hidden_dim=64,
        intermediate_dim=256,
        head_dim=32,
        dtype="float32",
    )
    rng = np.random.default_rng(0)
    for variable in backbone.weights:
        values = torch.from_numpy(rng.normal(0.0, 0.3, variable.shape).astype(np.float32))
        variable.assign(values.to(torch.bfloat16).float().numpy())
    preprocessor = keras_hub.models.GemmaCausalLMPreprocessor(vocab, sequence_length=32)
    causal_lm = keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=preprocessor)
    causal_lm.save_to_preset(str(directory))


def _write_flax(root: Path, tokenizer: Path) -> None:
    """A Flax checkpoint in Kaggle's layout, written by the `gemma` library (fused qkv)."""
    import os

    import numpy as np

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        import jax
        from gemma import modules
        from gemma import params as params_lib
        from gemma import transformer as transformer_lib
    except ImportError:
        print("jax / gemma are not installed: no Flax checkpoint", file=sys.stderr)
        return
    config = transformer_lib.TransformerConfig(
        num_layers=2,
        num_embed=VOCAB + 64,
        embed_dim=64,
        hidden_dim=128,
        num_heads=4,
        head_dim=32,
        num_kv_heads=4,
        final_logit_softcap=None,
        use_post_attn_norm=False,
        use_post_ffw_norm=False,
        attention_types=(modules.AttentionType.GLOBAL,) * 2,
        max_cache_length=None,
    )
    model = transformer_lib.Transformer(config)
    ids = jax.numpy.zeros((1, 4), dtype=jax.numpy.int32)
    mask = transformer_lib.make_causal_attn_mask(jax.numpy.ones(ids.shape, dtype=bool))
    inputs = (ids, jax.numpy.arange(4)[None], None, mask)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs))
    rng = np.random.default_rng(4)
    params = jax.tree_util.tree_map(
        lambda s: jax.numpy.asarray(rng.normal(0.0, 0.3, s.shape).astype(np.float32)), shapes
    )
    version = root / "flax" / "2b-pt" / "1"
    version.mkdir(parents=True)
    params_lib.format_and_save_params({"transformer": params["params"]}, str(version / "2b-pt"))
    shutil.copyfile(tokenizer, version / "spm.model")


def _cli(*args) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = cli([str(a) for a in args])
    if status != 0:
        raise SystemExit(f"codegemma {' '.join(map(str, args))} failed with {status}")


# ------------------------------------------------------------------------------------- run

# (kernels, dtype, quantize, fused decode, byte GEMM, OpenMP sharing: None = as detected)
FULL = [
    (kernels, dtype, quantize, fused, byte, None)
    for dtype in ("float32", "bfloat16")
    for quantize in (None, "int8", "int4")
    for kernels, fused, byte in (
        ("torch", True, True),
        ("native", True, True),
        ("native", False, True),
        ("native", True, False),
        ("native", False, False),
    )
] + [("native", "bfloat16", q, True, True, False) for q in (None, "int8", "int4")]
SHORT = [
    (kernels, dtype, quantize, fused, fused, None)
    for dtype in ("float32", "bfloat16")
    for quantize in (None, "int4")
    for kernels, fused in (("torch", True), ("native", True), ("native", False))
]


def fixtures(root: Path) -> list[tuple[str, str | None, dict, list]]:
    """(name, model path or None for the default model, load arguments, settings)."""
    out = [("trained", "trained", {}, FULL), ("default", None, {}, SHORT)]
    for name in ("mqa", "mha", "gguf-f16.gguf", "gguf-bf16.gguf", "gguf-q8_0.gguf"):
        out.append((name, name, {}, SHORT))
    for name in ("gguf-q4_0.gguf", "quant-int8", "quant-int4", "quant-gguf-int8"):
        out.append((name, name, {}, SHORT))
    for name in ("jlama-Q4", "jlama-I8", "keras", "flax/flax/2b-pt"):
        out.append((name, name, {}, SHORT))
    adapter = str(root / "adapter")
    out.append(("adapter-merged", "trained", {"adapter": adapter}, SHORT))
    out.append(("adapter-separate", "trained", {"adapter": adapter, "merge_adapter": False}, SHORT))
    return [f for f in out if f[1] is None or (root / f[1]).exists()]


def load(path, kernels, dtype, quantize, fused, byte, shares, threads, extra):
    """codegemma.load with the kernel switches: options where the engine takes them, else the
    attributes that held them before (pre-refactor commits)."""
    arguments = dict(dtype=dtype, quantize=quantize, kernels=kernels, threads=threads, **extra)
    options_type = getattr(codegemma, "KernelOptions", None)
    if options_type is not None:
        options = options_type(fused_decode=fused, byte_gemm=byte, share_openmp=shares)
        return codegemma.load(path, kernel_options=options, **arguments)
    lm = codegemma.load(path, **arguments)
    backend = lm.acceleration.backend
    if backend is not None:
        backend.fused_decode, backend.byte_gemm = fused, byte
        if shares is not None:
            lm.acceleration.native.shares_openmp = shares
    return lm


def measure(lm) -> dict[str, object]:
    """Everything a forward pass decides, through the engine's public entry points."""
    from codegemma.prompts import Prompt

    tokenizer = lm.tokenizer
    out: dict[str, object] = {"weights": lm.weights, "kernels": lm.acceleration.kernels}
    out["logits"] = lm.logits(tokenizer.encode(LONG))
    ids = [tokenizer.encode(p) for p in PROMPTS]
    engine, steps = lm.batch(), 4
    caches = [lm.new_cache(len(i) + steps) for i in ids]
    for prompt, cache in zip(ids, caches, strict=True):
        engine.add(lm.sequence(Prompt(prompt, ()), max_new_tokens=0, cache=cache))
    with torch.inference_mode():
        for _ in engine.run():
            pass
        decoded = [engine.decode(caches, [5 + step, 9 + step, 13]) for step in range(steps)]
    out["decode"] = torch.stack(decoded)
    done = lm.generate(PROMPTS, max_new_tokens=10)
    out["generate"] = torch.tensor([c.token_ids + [-1] * (10 - len(c.token_ids)) for c in done])
    sampled = lm.generate([LONG, *PROMPTS], max_new_tokens=8, temperature=0.9, seed=1)
    out["sampled"] = torch.tensor([c.token_ids + [-1] * (8 - len(c.token_ids)) for c in sampled])
    fim = lm.complete("def add(a, b):\n    ", "\n\nprint(add(1, 2))\n", max_new_tokens=8)
    out["complete"] = torch.tensor(fim.token_ids or [-1])
    out["embed"] = lm.embed(PROMPTS[:2])
    return out


def writers(root: Path) -> dict[str, str]:
    """sha256 of every file `convert` and `quantize` write from the fixtures."""
    gguf = ("convert", "--to", "gguf", "--type")
    jobs = [  # (name, source, output: a file name or "" for a directory, command and flags)
        ("gguf-f16", "trained", "m.gguf", (*gguf, "f16")),
        ("gguf-q8_0", "trained", "m.gguf", (*gguf, "q8_0")),
        ("gguf-q4_0", "trained", "m.gguf", (*gguf, "q4_0")),
        ("gguf-from-keras", "keras", "m.gguf", (*gguf, "q8_0")),
        ("quant-int8", "trained", "", ("quantize", "--bits", "8")),
        ("quant-int4", "trained", "", ("quantize", "--bits", "4")),
        ("quant-gguf", "gguf-q4_0.gguf", "", ("quantize", "--bits", "4")),
        ("hf-from-gguf", "gguf-q8_0.gguf", "", ("convert", "--to", "hf")),
        ("hf-from-gguf-f32", "gguf-f16.gguf", "", ("convert", "--to", "hf", "--dtype", "float32")),
        ("hf-from-jlama", "jlama-Q4", "", ("convert", "--to", "hf")),
        ("hf-from-keras", "keras", "", ("convert", "--to", "hf")),
        ("hf-from-flax", "flax/flax/2b-pt", "", ("convert", "--to", "hf")),
    ]
    hashes = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, source, file_name, (command, *flags) in jobs:
            if not (root / source).exists():
                continue
            folder = Path(scratch) / name
            folder.mkdir()
            out = folder / file_name if file_name else folder / "out"
            _cli(command, root / source, out, *flags)
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    key = f"{name}/{path.relative_to(folder)}"
                    hashes[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def run(root: Path, out_path: Path, threads: int) -> None:
    results: dict[str, object] = {}
    started = time.perf_counter()
    for name, path, extra, settings in fixtures(root):
        model = None if path is None else str(root / path)
        for setting in settings:
            key = f"{name} " + " ".join(map(str, setting))
            lm = load(model, *setting, threads, extra)
            results[key] = measure(lm)
            lm.close()
        print(f"{name}: {len(settings)} settings, {time.perf_counter() - started:.0f} s")
    results["writers"] = writers(root)
    torch.save(results, out_path)
    print(f"wrote {out_path}: {len(results) - 1} settings, {len(results['writers'])} files")


# --------------------------------------------------------------------------------- compare


def compare(a_path: Path, b_path: Path) -> int:
    a, b = torch.load(a_path), torch.load(b_path)
    problems = [f"only in {a_path.name}: {k}" for k in a.keys() - b.keys()]
    problems += [f"only in {b_path.name}: {k}" for k in b.keys() - a.keys()]
    checked = 0
    for key in sorted(a.keys() & b.keys()):
        for part in sorted(a[key].keys() | b[key].keys()):
            x, y = a[key].get(part), b[key].get(part)
            checked += 1
            if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
                if x.shape != y.shape or not torch.equal(x, y):
                    problems.append(f"{key} / {part}: {_difference(x, y)}")
            elif x != y:
                problems.append(f"{key} / {part}: {x!r} != {y!r}")
    for line in problems:
        print(line)
    print(f"{checked} values compared, {len(problems)} differ")
    return 1 if problems else 0


def _difference(x: torch.Tensor, y: torch.Tensor) -> str:
    if x.shape != y.shape:
        return f"shape {list(x.shape)} != {list(y.shape)}"
    diff = (x.double() - y.double()).abs().max().item()
    scale = x.double().abs().max().item()
    return f"max abs difference {diff:.3g} (scale {scale:.3g})" if math.isfinite(diff) else "nan"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build").add_argument("dir", type=Path)
    run_parser = commands.add_parser("run")
    run_parser.add_argument("dir", type=Path)
    run_parser.add_argument("out", type=Path)
    run_parser.add_argument("--threads", type=int, default=2)
    compare_parser = commands.add_parser("compare")
    compare_parser.add_argument("a", type=Path)
    compare_parser.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.dir)
    elif args.command == "run":
        run(args.dir, args.out, args.threads)
    else:
        return compare(args.a, args.b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
