"""Which replica runs a request: the routing policy of `codegemma serve --replicas`, as pure
functions and one small table. The Ray request router (`router.py`) only feeds them Ray's
view of the replicas.

An editor's keystroke requests stay fast only where its KV cache is. Each request gets an
affinity key: the editor's own when it names one (llama.cpp `id_slot`, OpenAI `user`), else a
hash of the prompt's first tokens (one file's keystrokes, or one conversation's turns, share
their prompt's start, so an Ollama chat keeps its replica too). `Owners` remembers the replica
that ran each key's latest request, where its freshest cache is, and the request goes there
while that replica lives and is not overloaded (more than `imbalance` requests above the
least loaded). A new key, or one whose replica died or is overloaded, goes to the least loaded
replica, then to the one holding the fewest keys, then by rendezvous hashing of the key (the
same choice in every ingress process while loads are equal), and stays there.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Mapping, Sequence

from codegemma.serving.requests import GenerationRequest

PREFIX_TOKENS = 32  # prompt tokens hashed into the key of a request that names no editor


def affinity_key(request: GenerationRequest, prompt_ids: Sequence[int]) -> str | None:
    """The request's routing key: its client's, else its prompt's first PREFIX_TOKENS tokens;
    None for a request that keeps no cache (nothing to be near: route it by load)."""
    if not request.cache_prompt:
        return None
    if request.client is not None:
        return f"client:{request.client}"
    head = ",".join(map(str, prompt_ids[:PREFIX_TOKENS]))
    return "prefix:" + hashlib.blake2b(head.encode(), digest_size=8).hexdigest()


def rendezvous_order(key: str, replicas: Sequence[str]) -> list[str]:
    """`replicas` by falling weight hash(key, replica): the same order wherever computed, and
    a replica that leaves moves only the keys it came first for."""

    def weight(replica: str) -> bytes:
        return hashlib.blake2b(f"{key}|{replica}".encode(), digest_size=8).digest()

    return sorted(replicas, key=weight, reverse=True)


def ranked(
    key: str,
    loads: Mapping[str, int | None],
    *,
    owner: str | None,
    keys_held: Mapping[str, int],
    imbalance: int,
) -> list[str]:
    """The replicas in the order to try for `key`: its `owner` first unless it is gone or
    more than `imbalance` requests above the least loaded; then (or else) by load, keys held
    and rendezvous order. `loads`: replica -> ongoing requests (None: unknown, taken as 0)."""
    known = {replica: loads[replica] or 0 for replica in loads}
    hashed = {replica: i for i, replica in enumerate(rendezvous_order(key, list(known)))}
    order = sorted(known, key=lambda r: (known[r], keys_held.get(r, 0), hashed[r]))
    if owner in known and known[owner] - min(known.values()) <= imbalance:
        order.remove(owner)
        order.insert(0, owner)
    return order


class Owners:
    """Which replica ran each key's latest request: at most `size` keys, each forgotten once
    idle for `ttl_s` (by then its replica has likely evicted its cache), least recent first."""

    def __init__(self, size: int = 10_000, ttl_s: float = 600.0) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self._owners: collections.OrderedDict[str, tuple[str, float]] = collections.OrderedDict()
        self._held: collections.Counter[str] = collections.Counter()  # replica -> keys

    def owner(self, key: str, now: float) -> str | None:
        self._expire(now)
        entry = self._owners.get(key)
        return None if entry is None else entry[0]

    def record(self, key: str, replica: str, now: float) -> None:
        """`replica` ran `key`'s latest request."""
        self._drop(key)
        self._owners[key] = (replica, now)
        self._held[replica] += 1
        while len(self._owners) > self.size:
            self._drop(next(iter(self._owners)))
        self._expire(now)

    def keys_held(self, now: float) -> Mapping[str, int]:
        self._expire(now)
        return self._held

    def forget(self, replica: str) -> None:
        """A replica is gone: its keys are new again."""
        for key in [k for k, (r, _) in self._owners.items() if r == replica]:
            self._drop(key)

    def _drop(self, key: str) -> None:
        entry = self._owners.pop(key, None)
        if entry is not None:
            self._held[entry[0]] -= 1
            if not self._held[entry[0]]:
                del self._held[entry[0]]

    def _expire(self, now: float) -> None:
        while self._owners:
            key, (_, used) = next(iter(self._owners.items()))
            if now - used <= self.ttl_s:
                return
            self._drop(key)
