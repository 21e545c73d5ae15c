"""The review queue's background work: cases past their deadline get their route's expiry
action, and every decided case is posted to the config's webhook, signed, until it is
delivered (kept in the store, so a restart resumes the deliveries).

The signature follows the common scheme: ``x-inferline-signature: t=<unix time>,v1=<hex>``
where hex is HMAC-SHA256 of ``"<t>.<body>"`` with the shared secret; a receiver recomputes
it and refuses an old ``t``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import httpx

from inferline.evals.reviewed import ReviewedCases
from inferline.guard import ReviewDesk
from inferline.server.periodic import Periodic

logger = logging.getLogger(__name__)
CLAIM_S = 60.0  # a delivery taken by a replica that died is due again after this
MAX_DELIVERIES = 8  # then the delivery is given up (the case keeps its result for polls)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``x-inferline-signature`` header of one delivery."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def completion_of(case: dict[str, Any]) -> dict[str, Any] | None:
    """A decided case's result as the chat completion the client would have had."""
    result = case.get("result")
    if result is None:
        return None
    draft = case["draft"]
    usage = draft.get("usage") or {}
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    decision = {"decision": result["decision"], "review_id": case["id"],
                "status": case["status"]}  # fmt: skip
    if result.get("reason"):
        decision["reason"] = result["reason"]
    return {
        "id": case["request_id"],
        "object": "chat.completion",
        "created": int(case.get("decided_at") or case["created_at"]),
        "model": draft.get("model") or case["route"],
        "choices": [
            {
                "index": 0,
                "message": result["message"],
                "logprobs": None,
                "finish_reason": result["finish_reason"],
            }
        ],  # fmt: skip
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },  # fmt: skip
        "inferline": decision,
    }


def review_object(case: dict[str, Any], *, reviewer_view: bool) -> dict[str, Any]:
    """A case as the API shows it: a reviewer sees the request, the draft and every check;
    the client that asked sees the status and, once decided, its answer."""
    body: dict[str, Any] = {
        "id": case["id"], "object": "review", "status": case["status"], "route": case["route"],
        "request_id": case["request_id"], "trace_id": case["trace_id"],
        "check": case["check_name"], "score": case["score"], "created_at": case["created_at"],
        "deadline_at": case["deadline_at"], "decided_at": case["decided_at"],
        "comment": case["comment"], "result": completion_of(case),
    }  # fmt: skip
    if reviewer_view:
        body.update(request=case["request"], draft=case["draft"], checks=case["checks"],
                    reviewer=case["reviewer"], key_id=case["key_id"],
                    on_expiry=case["on_expiry"])  # fmt: skip
    return body


class ReviewService(Periodic):
    """Expires overdue cases, adds the ones people decided to the route's reviews dataset,
    and delivers decided ones to the webhook (if configured)."""

    name = "reviews: a pass"

    def __init__(
        self,
        desk: ReviewDesk,
        *,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        interval_s: float = 1.0,
        reviewed: ReviewedCases | None = None,
    ) -> None:
        super().__init__(interval_s)
        self.desk = desk
        self.reviewed = reviewed  # adds decided cases to the ``reviews/<route>`` datasets
        self.webhook_url, self._secret = webhook_url, webhook_secret
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """Starts the passes."""
        self._client = httpx.AsyncClient(timeout=10.0, follow_redirects=False, trust_env=False)
        await super().start()

    async def stop(self) -> None:
        """Stops them (undelivered decisions stay due in the store)."""
        await super().stop()
        if self._client is not None:
            await self._client.aclose()

    async def run_once(self) -> None:
        """One pass: expire what is overdue, deliver what is due."""
        await asyncio.to_thread(self.desk.expire_overdue)
        if self.reviewed is not None:
            await asyncio.to_thread(self.reviewed.sync)
        if self.webhook_url is None or self._client is None:
            return
        now = time.time()
        store = self.desk.store
        for case in await asyncio.to_thread(store.webhooks_due, now):
            claim = (case["id"], case["webhook_next_at"], now + CLAIM_S)
            if await asyncio.to_thread(store.claim_webhook, *claim):  # one replica posts it
                await self._deliver(case)

    async def _deliver(self, case: dict[str, Any]) -> None:
        assert self._client is not None and self.webhook_url is not None
        payload = {"type": "review.decided", "review": review_object(case, reviewer_view=False)}
        body = json.dumps(payload).encode()
        stamp = int(time.time())
        headers = {"content-type": "application/json", "x-inferline-event": "review.decided",
                   "x-inferline-signature": signature(self._secret or "", stamp, body)}  # fmt: skip
        error: str | None = None
        try:
            response = await self._client.post(self.webhook_url, content=body, headers=headers)
            if response.status_code >= 300:
                error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        attempts = int(case["webhook_attempts"]) + 1
        next_at = None
        if error is not None and attempts < MAX_DELIVERIES:
            next_at = time.time() + min(300.0, 2.0**attempts)
        if error is not None:
            logger.warning("reviews: webhook for %s failed (%s)", case["id"], error)
        await asyncio.to_thread(
            self.desk.store.webhook_sent, case["id"], error=error, next_at=next_at
        )
