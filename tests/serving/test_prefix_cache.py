"""The prefix cache: longest-common-prefix lookup, taking over vs copying, eviction, and that a
sequence continued from a reused cache equals one computed from scratch."""

import random

import pytest
import torch
from serving_helpers import lively_engine

from codegemma.kv_cache import KVCache
from codegemma.prompts import Prompt
from codegemma.serving.prefix_cache import PrefixCache, common_prefix_length


def naive_common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_common_prefix_length_equals_the_naive_count():
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.randrange(3) for _ in range(rng.randrange(40))]
        b = a[: rng.randrange(len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(10))]
        assert common_prefix_length(a, b) == naive_common_prefix(a, b)
        assert common_prefix_length(b, a) == naive_common_prefix(a, b)


def make_cache(capacity):
    return KVCache(2, 1, capacity, 4, dtype=torch.float32)


def filled(ids, capacity=16):
    cache = make_cache(capacity)
    for slot, token in enumerate(ids):  # slot values encode the token, to check copies
        cache.keys[:, :, slot] = token
        cache.values[:, :, slot] = -token
    cache.length = len(ids)
    return cache


def test_a_continuing_request_takes_the_entry_over():
    prefixes = PrefixCache(make_cache, max_capacity=64, budget_bytes=1 << 20, grain=16)
    cache = filled([1, 2, 3, 4, 5])
    prefixes.release([1, 2, 3, 4, 5], cache)
    got, shared = prefixes.acquire([1, 2, 3, 9], needed=8)
    assert got is cache and shared == 3 and got.length == 3
    assert len(prefixes) == 0


def test_a_request_sharing_little_gets_a_copy_and_leaves_the_entry():
    prefixes = PrefixCache(make_cache, max_capacity=64, budget_bytes=1 << 20, grain=16)
    ids = [1, 2, 3, 4, 5, 6, 7, 8]
    prefixes.release(ids, filled(ids))
    got, shared = prefixes.acquire([1, 2, 9], needed=4)
    assert shared == 2 and got.length == 2 and len(prefixes) == 1
    assert got.keys[0, 0, :2, 0].tolist() == [1, 2]
    assert got.values[0, 0, :2, 0].tolist() == [-1, -2]
    # The entry is intact for its own client.
    again, shared = prefixes.acquire(ids + [10], needed=12)
    assert shared == 8 and again.keys[1, 0, 7, 3].item() == 8


def test_a_bigger_request_gets_a_bigger_cache_with_the_shared_slots():
    prefixes = PrefixCache(make_cache, max_capacity=64, budget_bytes=1 << 20, grain=16)
    prefixes.release([1, 2, 3], filled([1, 2, 3], capacity=4))
    got, shared = prefixes.acquire([1, 2, 3, 4], needed=20)
    assert shared == 3 and got.capacity == 32
    assert got.keys[0, 0, :3, 0].tolist() == [1, 2, 3]
    capped, _ = prefixes.acquire([7], needed=1000)
    assert capped.capacity == 64  # never beyond the context


def test_longest_match_wins_and_prefixes_of_a_new_entry_are_dropped():
    prefixes = PrefixCache(make_cache, max_capacity=64, budget_bytes=1 << 20, grain=16)
    prefixes.release([5, 6], filled([5, 6]))
    prefixes.release([1, 2], filled([1, 2]))
    prefixes.release([1, 2, 3, 4], filled([1, 2, 3, 4]))  # [1, 2] is now useless
    assert len(prefixes) == 2
    _, shared = prefixes.acquire([1, 2, 3, 4, 5], needed=6)
    assert shared == 4
    _, shared = prefixes.acquire([5, 6, 7], needed=6)
    assert shared == 2
    _, shared = prefixes.acquire([8], needed=2)
    assert shared == 0


def test_least_recently_used_entries_go_over_budget():
    one = filled([1]).keys.nbytes * 2
    prefixes = PrefixCache(make_cache, max_capacity=64, budget_bytes=2 * one, grain=16)
    for token in (1, 2, 3):
        prefixes.release([token], filled([token]))
    assert len(prefixes) == 2 and prefixes.nbytes <= 2 * one
    assert prefixes.acquire([1], needed=2)[1] == 0  # evicted
    assert prefixes.acquire([3], needed=2)[1] == 1


@pytest.fixture(scope="module")
def lm(tiny_tokenizer):
    return lively_engine(tiny_tokenizer)


def continue_from(lm, cache, ids, max_new=12, chunk=256):
    sequence = lm.sequence(Prompt(ids, ("<eos>",)), max_new_tokens=max_new, cache=cache)
    engine = lm.batch(prefill_chunk=chunk)
    engine.add(sequence)
    with torch.inference_mode():
        for _ in engine.run():
            pass
    return sequence


def test_keystrokes_reuse_the_cache_and_match_a_fresh_computation(lm):
    prefixes = PrefixCache(lm.new_cache, max_capacity=lm.context_length, budget_bytes=1 << 24)
    text = "def area(width, height):\n    return width * height\n\nprint(area("
    for end in range(20, len(text) + 1, 7):
        ids = lm.tokenizer.encode(text[:end])
        cache, shared = prefixes.acquire(ids, needed=len(ids) + 12)
        run = continue_from(lm, cache, ids, chunk=5)
        assert run.reused == min(shared, len(ids) - 1)
        if end > 20:
            assert run.reused >= len(ids) - 8  # only the last few tokens were recomputed
        fresh = lm.generate(text[:end], max_new_tokens=12)
        assert run.completion.token_ids == fresh.token_ids
        assert run.completion.text == fresh.text
        prefixes.release(run.cached_ids, run.cache)


def test_prefill_only_keeps_the_whole_prompt(lm):
    ids = lm.tokenizer.encode("import os\nimport sys\n")
    run = continue_from(lm, lm.new_cache(64), ids, max_new=0, chunk=4)
    assert run.completion.text == "" and run.generated == 0
    assert run.cached_ids == ids
