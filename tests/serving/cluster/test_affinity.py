"""The routing policy of `serve --replicas` (pure functions, no Ray) and the options' checks."""

import collections
import itertools

import pytest

from codegemma.serving.cluster.affinity import (
    PREFIX_TOKENS,
    Owners,
    affinity_key,
    ranked,
    rendezvous_order,
)
from codegemma.serving.cluster.options import ClusterOptions
from codegemma.serving.requests import FimInput, GenerationRequest

REPLICAS = [f"replica-{i}" for i in range(4)]


def request(**fields) -> GenerationRequest:
    return GenerationRequest(FimInput("x", ""), **fields)


def test_a_named_client_is_its_own_key_whatever_its_prompt():
    editor = request(client="slot:3")
    assert affinity_key(editor, [1, 2, 3]) == affinity_key(editor, [9, 9]) == "client:slot:3"


def test_an_unnamed_request_is_keyed_by_its_prompts_first_tokens():
    start = list(range(100, 100 + PREFIX_TOKENS))
    typing = [affinity_key(request(), start + list(range(n))) for n in range(0, 50, 7)]
    assert len(set(typing)) == 1  # keystrokes only append: one key
    moved = affinity_key(request(), [7, *start[1:]])
    assert moved != typing[0]


def test_a_request_that_keeps_no_cache_is_routed_by_load_alone():
    assert affinity_key(request(cache_prompt=False, client="u"), [1, 2]) is None


def test_rendezvous_order_is_the_same_wherever_computed():
    keys = [f"prefix:{i}" for i in range(50)]
    shuffled = list(reversed(REPLICAS))
    assert all(rendezvous_order(k, REPLICAS) == rendezvous_order(k, shuffled) for k in keys)


def test_keys_spread_over_replicas_and_only_a_dead_replicas_keys_move():
    keys = [f"client:{i}" for i in range(2000)]
    first = {k: rendezvous_order(k, REPLICAS)[0] for k in keys}
    counts = collections.Counter(first.values())
    assert set(counts) == set(REPLICAS) and min(counts.values()) > 2000 / 4 * 0.8
    survivors = REPLICAS[1:]
    after = {k: rendezvous_order(k, survivors)[0] for k in keys}
    moved = [k for k in keys if after[k] != first[k]]
    assert moved and all(first[k] == REPLICAS[0] for k in moved)
    # The dead replica's keys go to their second choice, spread over the survivors.
    assert len(collections.Counter(after[k] for k in moved)) == 3


def test_a_key_stays_with_its_owner_until_the_owner_is_overloaded():
    key = "client:editor"
    loads = {r: 2 for r in REPLICAS}
    held = {"replica-0": 5}
    assert ranked(key, loads, owner="replica-3", keys_held=held, imbalance=4)[0] == "replica-3"
    loads["replica-3"] = 6  # 4 above the least loaded: still its replica
    assert ranked(key, loads, owner="replica-3", keys_held=held, imbalance=4)[0] == "replica-3"
    loads["replica-3"] = 7  # 5 above: placed again, least loaded first
    order = ranked(key, loads, owner="replica-3", keys_held=held, imbalance=4)
    assert order[-1] == "replica-3" and order[-2] == "replica-0"  # it holds the most keys


def test_a_new_key_goes_to_the_least_loaded_then_the_one_holding_fewest_keys():
    loads = {"a": 3, "b": 1, "c": 1, "d": None}  # unknown counts as idle
    assert ranked("k", loads, owner=None, keys_held={}, imbalance=8)[0] == "d"
    loads["d"] = 1
    order = ranked("k", loads, owner=None, keys_held={"b": 2, "c": 1, "d": 1}, imbalance=8)
    assert order[0] in ("c", "d") and order[2:] == ["b", "a"]
    # Between equals, the key's rendezvous order decides: the same in every ingress.
    assert order[:2] == rendezvous_order("k", ["c", "d"])


def test_a_dead_owner_is_passed_over():
    order = ranked("k", {"a": 0, "b": 0}, owner="gone", keys_held={}, imbalance=0)
    assert sorted(order) == ["a", "b"]


def test_new_keys_spread_evenly_when_loads_are_equal():
    owners, now = Owners(), 0.0
    loads = dict.fromkeys(REPLICAS, 0)
    for i in range(8):
        key = f"client:{i}"
        held = owners.keys_held(now)
        replica = ranked(key, loads, owner=owners.owner(key, now), keys_held=held, imbalance=8)
        owners.record(key, replica[0], now)
    assert sorted(owners.keys_held(now).values()) == [2, 2, 2, 2]


def test_owners_forget_idle_keys_the_oldest_first_and_a_dead_replicas_keys():
    owners = Owners(size=3, ttl_s=10)
    for i, replica in enumerate(["a", "a", "b", "b"]):
        owners.record(f"k{i}", replica, now=float(i))
    assert owners.owner("k0", 3.0) is None  # over the size: the least recent went
    assert dict(owners.keys_held(3.0)) == {"a": 1, "b": 2}
    owners.record("k1", "b", now=4.0)  # k1's latest request ran elsewhere
    assert owners.owner("k1", 4.0) == "b" and dict(owners.keys_held(4.0)) == {"b": 3}
    assert owners.owner("k2", 12.5) is None and owners.owner("k1", 12.5) == "b"  # k2 idle 10.5
    owners.forget("b")
    assert owners.owner("k1", 12.5) is None and not owners.keys_held(12.5)


def test_options_from_a_config_files_args():
    options = ClusterOptions.from_args({"replicas": 3, "cors_origins": ["http://a"]})
    assert options.replicas == 3 and options.cors_origins == ("http://a",)
    assert options.max_ongoing == options.max_active * options.queue_per_replica
    assert options.router_imbalance == options.max_active
    with pytest.raises(ValueError, match="unknown codegemma option"):
        ClusterOptions.from_args({"replica": 2})


@pytest.mark.parametrize(
    "bad",
    [
        {"replicas": 0},
        {"threads": 0},
        {"max_active": True},
        {"fim_mode": "pms"},
        {"routing": "random"},
        {"imbalance": -1},
        {"log_level": "loud"},
        {"max_body_mib": 0},
    ],
)
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError):
        ClusterOptions(**bad)


def test_every_routing_choice_is_a_permutation():
    for key, loads in itertools.product(["a", "b"], [(0, 9, 3, 3), (5, 5, 5, 0)]):
        loads = dict(zip(REPLICAS, loads, strict=True))
        order = ranked(key, loads, owner="replica-1", keys_held={"replica-2": 1}, imbalance=2)
        assert sorted(order) == sorted(REPLICAS)
