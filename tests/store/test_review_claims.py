"""Gateway replicas share the review queue's database: a decided case's webhook is posted
by one of them (a conditional claim), and due again if that one died."""

from __future__ import annotations

import time
from pathlib import Path

from inferline.store import connect, migrate
from inferline.store.reviews import ReviewStore


def test_one_replica_claims_a_due_webhook(tmp_path: Path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'r.db'}")
    migrate(engine)
    replicas = [ReviewStore(engine), ReviewStore(engine)]
    now = time.time()
    replicas[0].create({"id": "rv_1", "request_id": "r", "route": "agent", "created_at": now,
                        "deadline_at": now + 600, "on_expiry": "abstain", "check_name": "c",
                        "request": {}, "draft": {}, "checks": [], "texts": {}})  # fmt: skip
    assert replicas[1].decide("rv_1", "approved", {"m": 1}, reviewer="k", now=now) is not None
    assert replicas[0].decide("rv_1", "rejected", {}, reviewer="k") is None  # decided once
    due = [store.webhooks_due(now + 1) for store in replicas]
    assert [len(d) for d in due] == [1, 1]  # both passes see it...
    claims = [s.claim_webhook("rv_1", d[0]["webhook_next_at"], now + 61)
              for s, d in zip(replicas, due, strict=True)]  # fmt: skip
    assert claims == [True, False]  # ...one posts it
    assert replicas[1].webhooks_due(now + 30) == []  # taken for 60 s
    assert len(replicas[1].webhooks_due(now + 62)) == 1  # its taker died: due again
    replicas[0].webhook_sent("rv_1")
    assert replicas[1].webhooks_due(now + 62) == []
