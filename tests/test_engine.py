"""The public API on tiny random checkpoints, checked against transformers."""

import pytest
import torch
import transformers
from tiny_models import ScriptedModel, tiny_config

import codegemma
from codegemma.engine import CodeGemma
from codegemma.errors import InvalidRequestError, PromptTooLongError
from codegemma.quant.backends import DECODE_ROWS
from codegemma.tokenizer import Tokenizer


@pytest.mark.parity
def test_loaded_logits_equal_transformers(mqa_checkpoint, tiny_lm):
    hf = transformers.GemmaForCausalLM.from_pretrained(mqa_checkpoint, dtype=torch.float32).eval()
    ids = tiny_lm.tokenizer.encode("def add(a, b):\n    return a + b\n")
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0]
    got = tiny_lm.logits(ids)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parity
def test_mha_checkpoint_logits_equal_transformers(mha_checkpoint):
    lm = codegemma.load(mha_checkpoint, dtype="float32")
    assert lm.config.head_dim * lm.config.num_attention_heads != lm.config.hidden_size
    hf = transformers.GemmaForCausalLM.from_pretrained(mha_checkpoint, dtype=torch.float32).eval()
    ids = lm.tokenizer.encode("for i in range(10):\n\tprint(i)")
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0]
    assert (lm.logits(ids) - expected).abs().max().item() <= 1e-4


@pytest.mark.parity
def test_greedy_generation_matches_transformers_generate(mqa_checkpoint, tiny_lm):
    hf = transformers.GemmaForCausalLM.from_pretrained(mqa_checkpoint, dtype=torch.float32).eval()
    prompt = "import os\nimport sys\n\ndef main():\n"
    ids = tiny_lm.tokenizer.encode(prompt)
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([ids]),
            max_new_tokens=32,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    expected = out[0, len(ids) :].tolist()
    result = tiny_lm.generate(prompt, max_new_tokens=32, stop_tokens=())
    # transformers was told no EOS; ours stops at EOS always, so compare up to it.
    eos = tiny_lm.tokenizer.eos_id
    cut = expected.index(eos) if eos in expected else len(expected)
    assert result.token_ids == expected[:cut]
    assert result.finish_reason == ("stop" if cut < 32 else "length")


def test_default_dtype_is_bfloat16_and_float16_is_refused_on_cpu(mqa_checkpoint):
    assert codegemma.load(mqa_checkpoint).model.model.embed_tokens.weight.dtype == torch.bfloat16
    with pytest.raises(InvalidRequestError, match="1000x"):
        codegemma.load(mqa_checkpoint, dtype="float16")
    with pytest.raises(InvalidRequestError, match="unknown dtype"):
        codegemma.load(mqa_checkpoint, dtype="int3")


def test_batch_equals_one_by_one(tiny_lm):
    prompts = ["def f(x):\n", "class A:\n    pass\n# comment that is longer\n", "x = [1, 2, 3]"]
    alone = [tiny_lm.generate(p, max_new_tokens=12) for p in prompts]
    together = tiny_lm.generate(prompts, max_new_tokens=12)
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    assert [c.text for c in together] == [c.text for c in alone]


def test_long_prompts_are_prefilled_in_chunks_with_the_same_result(tiny_lm, monkeypatch):
    calls = []
    forward = type(tiny_lm.model).forward

    def counting(self, input_ids, **kw):
        calls.append(input_ids.shape[1])
        return forward(self, input_ids, **kw)

    text = "def f(x):\n    return x * 2\n" * 3
    whole = tiny_lm.generate(text, max_new_tokens=8)
    monkeypatch.setattr(type(tiny_lm.model), "forward", counting)
    engine = tiny_lm.batch(prefill_chunk=7)
    sequence = tiny_lm.sequence(tiny_lm.prompts.text(text), max_new_tokens=8)
    engine.add(sequence)
    for _ in engine.run():
        pass
    prompt, expected = whole.usage.prompt_tokens, []
    while prompt - sum(expected) > DECODE_ROWS:
        expected.append(7)  # chunks of 7 while the rest is not a short prompt
    expected.append(prompt - sum(expected))  # the rest joins the decode pass as rows
    assert calls[: len(expected)] == expected
    assert sum(calls) == prompt + len(whole.token_ids) - 1  # then one token a step (the last unfed)
    assert sequence.completion.token_ids == whole.token_ids


def test_stream_pieces_join_to_the_result(tiny_lm):
    stream = tiny_lm.stream_complete("def main():\n    ", "\n    return 0\n", max_new_tokens=20)
    pieces = list(stream)
    done = stream.completion
    assert "".join(pieces) == done.text
    assert (
        done.text
        == tiny_lm.complete("def main():\n    ", "\n    return 0\n", max_new_tokens=20).text
    )
    assert done.usage.completion_tokens == len(done.token_ids) + (done.finish_reason == "stop")
    assert done.usage.prompt_tokens == len(
        tiny_lm.tokenizer.encode(codegemma.fim_prompt("def main():\n    ", "\n    return 0\n"))
    )
    assert done.usage.prompt_seconds > 0 and done.usage.generation_seconds >= 0


def test_stop_string_found_in_free_run_ends_the_text_there(tiny_lm):
    free = tiny_lm.generate("x = ", max_new_tokens=24, stop_tokens=())
    assert len(free.text) > 6, "the random model should produce some text"
    stop = free.text[3:6]
    stopped = tiny_lm.generate("x = ", max_new_tokens=24, stop_tokens=(), stop=[stop])
    assert stopped.text == free.text[: free.text.index(stop)]
    assert stopped.finish_reason == "stop" and stopped.stop == stop


def test_seeded_sampling_is_reproducible(tiny_lm):
    a = tiny_lm.generate("def", max_new_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=3)
    b = tiny_lm.generate("def", max_new_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=3)
    assert a.token_ids == b.token_ids


def scripted(tokenizer: Tokenizer, pieces: list[str]) -> CodeGemma:
    script = []
    for piece in pieces:
        special = tokenizer.token_id(piece)
        script += [special] if special is not None else tokenizer.encode(piece, add_bos=False)
    config = tiny_config(tokenizer.vocab_size)
    return CodeGemma(ScriptedModel(config, script).eval(), tokenizer, speculate=0)


@pytest.mark.parametrize(
    "stop",
    [
        "<|file_separator|>",
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        "<eos>",
        "<end_of_turn>",
    ],
)
def test_fim_stops_at_every_codegemma_stop_token(tiny_tokenizer, stop):
    lm = scripted(tiny_tokenizer, ["return a + b\n", stop, "junk after the stop"])
    result = lm.complete("def add(a, b):\n    ", "")
    assert result.text == "return a + b\n"
    assert (result.finish_reason, result.stop) == ("stop", stop)


def test_stop_string_split_across_tokens_never_streams(tiny_tokenizer):
    lm = scripted(tiny_tokenizer, ["a = 1\n", "\n", "de", "f g():", "<eos>"])
    stream = lm.stream_generate("x", stop=["\ndef"], max_new_tokens=50)
    pieces = list(stream)
    assert "".join(pieces) == "a = 1\n"
    assert stream.completion.stop == "\ndef"


def test_max_new_tokens_gives_length(tiny_tokenizer):
    lm = scripted(tiny_tokenizer, ["abc abc abc abc abc abc abc abc"])
    result = lm.generate("x", max_new_tokens=3)
    assert result.finish_reason == "length" and result.usage.completion_tokens == 3


def test_streamed_emoji_pieces_are_whole_characters(tiny_tokenizer):
    lm = scripted(tiny_tokenizer, ["print('🦊')", "<eos>"])
    pieces = list(lm.stream_generate("x"))
    assert "".join(pieces) == "print('🦊')"
    assert all("\ufffd" not in p for p in pieces)


def test_prompt_longer_than_context(tiny_tokenizer, tmp_path):
    lm = scripted(tiny_tokenizer, ["ok", "<eos>"])
    lm.model.config = lm.model.config.replace(max_position_embeddings=40)
    long_prefix = "".join(f"line_{i} = {i}\n" for i in range(60))
    with pytest.raises(PromptTooLongError, match="40 in the context window"):
        lm.complete(long_prefix, "tail\n")
    result = lm.complete(long_prefix, "tail\n", truncate=True, max_new_tokens=4)
    assert result.usage.truncated_tokens > 0
    assert result.usage.prompt_tokens <= 40 - 4
    with pytest.raises(PromptTooLongError):
        lm.generate(long_prefix)
    kept = lm.generate(long_prefix, truncate=True, max_new_tokens=4)
    assert kept.usage.prompt_tokens == 36 and kept.usage.truncated_tokens > 0


@pytest.mark.parametrize(
    "call",
    [
        lambda lm: lm.complete(123),
        lambda lm: lm.generate("x", max_new_tokens=0),
        lambda lm: lm.generate("x", temperature=-1),
        lambda lm: lm.generate("x", max_new_tokens=True),
        lambda lm: lm.generate([]),
        lambda lm: lm.chat([{"role": "model", "content": "hi"}]),
        lambda lm: lm.logits([]),
        lambda lm: lm.logits([10**9]),
    ],
)
def test_bad_arguments_give_clear_errors(tiny_lm, call):
    with pytest.raises(codegemma.CodeGemmaError):
        call(tiny_lm)


def test_invalid_unicode_prompt_is_a_clear_error(tiny_lm):
    with pytest.raises(codegemma.CodeGemmaError, match="UTF-8|surrogate"):
        tiny_lm.generate("bad \udc80 text")


def test_chat_uses_turns_and_stops_at_end_of_turn(tiny_tokenizer):
    lm = scripted(tiny_tokenizer, ["Use a loop.", "<end_of_turn>", "more"])
    result = lm.chat([{"role": "user", "content": "How?"}])
    assert (result.text, result.stop) == ("Use a loop.", "<end_of_turn>")
