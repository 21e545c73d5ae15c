"""`PrefixAwareRouter`: Ray Serve's replica choice for an engine deployment.

A request goes to the replica that last served the longest prefix of its prompt (its KV
blocks are likely still cached there) unless that replica is saturated; otherwise to the
least loaded replica. Load is what each replica reports (`EngineReplica.
record_routing_stats`: queued prompt tokens, running requests, free KV blocks, polled by
Ray Serve) plus the requests this router sent since, so a burst between two polls does not
all land on one replica. The prefix map is per router (one per gateway replica): chained
hashes of 256-character chunks of the prompt's text, at most ``max_entries``, oldest first
out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import OrderedDict
from typing import Any

from ray.serve.request_router import (
    FIFOMixin,
    PendingRequest,
    ReplicaID,
    ReplicaResult,
    RequestRouter,
    RunningReplica,
)

logger = logging.getLogger(__name__)
CHUNK_CHARS = 256


def prefix_hashes(text: str, chunk_chars: int = CHUNK_CHARS) -> list[str]:
    """Chained hashes of the text's whole chunks (the i-th names the first i+1 chunks)."""
    hashes, running = [], hashlib.blake2b(digest_size=12)
    for start in range(0, len(text) - chunk_chars + 1, chunk_chars):
        running.update(text[start : start + chunk_chars].encode())
        hashes.append(running.copy().hexdigest())
    return hashes


def request_text(pending: PendingRequest | None) -> str:
    """The prompt text of a routed ``generate`` call (messages as their JSON)."""
    if pending is None or not pending.args:
        return ""
    request = pending.args[0]
    prompt = getattr(request, "prompt", None)
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return " ".join(map(str, prompt))
    return json.dumps(getattr(request, "messages", None) or [], sort_keys=True)


class PrefixAwareRouter(FIFOMixin, RequestRouter):
    """Prefix-cache locality first, then the least loaded replica (see the module)."""

    def initialize_state(
        self,
        saturation_tokens: int = 4096,
        max_entries: int = 200_000,
        placement: str = "prefix",
        **_: Any,
    ) -> None:
        """Settings from the deployment's ``request_router_kwargs`` (``placement``:
        ``prefix``, or ``random``: a uniformly random replica, the baseline locality is
        measured against)."""
        self.saturation_tokens = saturation_tokens
        self.max_entries = max_entries
        self.placement = placement
        self.owner: OrderedDict[str, str] = OrderedDict()  # prefix hash -> replica id
        self.sent: dict[str, int] = {}  # replica id -> requests sent, not yet completed

    def _load(self, replica: RunningReplica) -> tuple[float, ...]:
        stats = replica.routing_stats or {}
        key = replica.replica_id.unique_id
        running = stats.get("running", 0) + self.sent.get(key, 0)
        return (stats.get("queued_tokens", 0), running, -stats.get("free_kv_blocks", 0))

    def _saturated(self, replica: RunningReplica) -> bool:
        queued, running, _ = self._load(replica)
        return queued >= self.saturation_tokens or running >= replica.max_ongoing_requests

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """Ranks: the replica holding the longest cached prefix (if not saturated), then
        every replica by load."""
        by_load = sorted(candidate_replicas, key=self._load)
        if not by_load:
            return []
        if self.placement == "random":
            return [[replica] for replica in random.sample(by_load, len(by_load))]
        ranks = [[replica] for replica in by_load]
        holder = self._holder(request_text(pending_request), candidate_replicas)
        if holder is not None and not self._saturated(holder):
            return [[holder], *[r for r in ranks if r[0] is not holder]]
        return ranks

    def _holder(self, text: str, candidates: list[RunningReplica]) -> RunningReplica | None:
        ids = {r.replica_id.unique_id: r for r in candidates}
        for digest in reversed(prefix_hashes(text)):
            owner = self.owner.get(digest)
            if owner in ids:
                return ids[owner]
        return None

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult
    ) -> None:
        """Remembers the prompt's prefix as cached on ``replica_id``."""
        key = replica_id.unique_id
        self.sent[key] = self.sent.get(key, 0) + 1
        for digest in prefix_hashes(request_text(pending_request)):
            self.owner[digest] = key
            self.owner.move_to_end(digest)
        while len(self.owner) > self.max_entries:
            self.owner.popitem(last=False)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        """One request fewer in flight on ``replica_id``."""
        key = replica_id.unique_id
        self.sent[key] = max(0, self.sent.get(key, 0) - 1)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        """Forgets a dead replica (its cache is gone with it)."""
        super().on_replica_actor_died(replica_id)
        key = replica_id.unique_id
        self.sent.pop(key, None)
        for digest in [d for d, owner in self.owner.items() if owner == key]:
            del self.owner[digest]
