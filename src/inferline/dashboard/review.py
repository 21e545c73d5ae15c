"""The review queue, the reviewer's everyday screen: pending cases nearest deadline first,
one case whole (request, draft answer or tool call, every check's score), and approve,
edit or reject with a comment — by keyboard (``j``/``k`` move, ``a`` approve, ``c``
comment, ``r`` reject, ``e`` edit) or by the buttons. The decision goes through the same desk as
``POST /v1/reviews/{id}``, so the client's poll sees it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from inferline.dashboard.app import require, require_post, with_notice
from inferline.dashboard.render import page
from inferline.guard import ReviewClosedError

router = APIRouter(include_in_schema=False)
_ACTIONS = ("approve", "edit", "reject")
_DONE = {"approve": "approved", "edit": "edited", "reject": "rejected"}


def _service(request: Request) -> Any:
    return getattr(request.app.state, "reviews", None)


@router.get("/ui/reviews")
def queue(request: Request) -> Response:
    """The pending cases, and the chosen one (the first by default) in full."""
    session = require(request, "reviewer")
    service = _service(request)
    cases = service.desk.store.find(status="pending", limit=200) if service else []
    chosen_id = request.query_params.get("case")
    chosen = next((c for c in cases if c["id"] == chosen_id), cases[0] if cases else None)
    recent = service.desk.store.find(limit=20) if service else []
    decided = [c for c in recent if c["status"] != "pending"]
    notice = request.query_params.get("notice")
    return page(request, "reviews.html", session, cases=cases, chosen=chosen, recent=decided,
                notice=notice, has_desk=service is not None)  # fmt: skip


@router.post("/ui/reviews/{review_id}")
def decide(
    review_id: str, request: Request, action: str = Form(...), comment: str = Form(""),
    answer: str = Form(""), csrf: str | None = Form(None),
) -> Response:  # fmt: skip
    """Applies the reviewer's verdict, then shows the next case."""
    session = require_post(request, "reviewer", csrf)
    service = _service(request)
    if service is None or action not in _ACTIONS:
        return with_notice("/ui/reviews", "unknown action")
    reviewer = session.key_id or "admin"
    try:
        service.desk.decide(review_id, action, reviewer=reviewer, comment=comment or None,
                            answer=answer if action == "edit" else None)  # fmt: skip
        notice = f"{review_id}: {_DONE[action]}"
    except ReviewClosedError as closed:
        notice = str(closed)
    service.nudge_threadsafe()
    return with_notice("/ui/reviews", notice)
