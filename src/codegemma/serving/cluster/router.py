"""The affinity request router: Ray Serve's extension point for choosing a replica
(`ray.serve.request_router.RequestRouter`), configured on the engine deployment with
`RequestRouterConfig(request_router_class=AffinityRouter)`. Ray runs it in every process that
holds a handle to the engines (the ingress), once per request.

A call that carries an affinity key (as its session id: `handle.options(session_id=KEY)`,
Serve's channel for session stickiness, in the request's metadata) is offered its replicas
one rank at a time, in the order `affinity.ranked` gives; Ray takes the first whose queue has
room, and backs off and asks again when none has. The replica that took it becomes the key's
owner (`on_request_routed`). A call without a key (embeddings, tokenizing, a request that
keeps no cache) gets two random replicas, the less loaded of which takes it: Ray's default
power-of-two choices. A dead replica leaves the candidates Ray passes in, and its keys are
placed again.
"""

from __future__ import annotations

import random
import time

# The `cluster` extra (pip install 'codegemma[cluster]').
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from codegemma.serving.cluster.affinity import Owners, ranked


class AffinityRouter(RequestRouter):
    """Keeps each affinity key on the replica that ran its latest request."""

    def initialize_state(self, imbalance: int = 8, key_ttl_s: float = 600.0) -> None:
        """`imbalance`: ongoing requests above the least loaded replica at which a key's
        replica is passed over; `key_ttl_s`: idle seconds after which a key is new again
        (its `request_router_kwargs`)."""
        self.imbalance = imbalance
        self.owners = Owners(ttl_s=key_ttl_s)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        key = _key(pending_request)
        if key is None or len(candidate_replicas) < 2:
            return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]
        by_name = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        loads = {
            name: self.replica_queue_len_cache.get(replica.replica_id)
            for name, replica in by_name.items()
        }
        now = time.monotonic()
        order = ranked(
            key,
            loads,
            owner=self.owners.owner(key, now),
            keys_held=self.owners.keys_held(now),
            imbalance=self.imbalance,
        )
        self.owners.record(key, order[0], now)  # so concurrent new keys spread; see below
        return [[by_name[name]] for name in order]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result):
        """The replica that took a request owns its key (its cache is the freshest now)."""
        key = _key(pending_request)
        if key is not None:
            self.owners.record(key, replica_id.unique_id, time.monotonic())

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.owners.forget(replica_id.unique_id)


def _key(pending_request: PendingRequest | None) -> str | None:
    """The affinity key the ingress sent as the call's session id (`backend.py`)."""
    return None if pending_request is None else pending_request.metadata.session_id or None
