"""``/v1/reviews``: the human-review queue.

Reviewers (keys with the ``reviewer`` role, or an admin key) list cases, read them whole
(request, draft answer or tool call, every check's score) and decide them: ``approve``,
``edit`` (with the answer), ``reject`` (with a comment). The client whose request opened a
case polls ``GET /v1/reviews/{id}`` with its own key and gets the status and, once decided,
the answer; it never sees the draft. The store is synchronous: FastAPI runs these off the
loop.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from inferline.core.errors import InvalidParameterError, PermissionDeniedError
from inferline.guard import ReviewClosedError, ReviewDesk
from inferline.server.app import Extension
from inferline.server.errors import APIError
from inferline.server.reviews import ReviewService, review_object
from inferline.server.state import ServerState
from inferline.server.tenancy import identity_of
from inferline.store.decisions import decision_stats
from inferline.store.reviews import STATUSES

router = APIRouter()


class VerdictBody(BaseModel):
    """``POST /v1/reviews/{id}``: ``answer`` (a string, or ``{content, tool_calls}``) with
    ``edit`` only."""

    model_config = ConfigDict(extra="forbid")
    action: Literal["approve", "edit", "reject"]
    answer: str | dict[str, Any] | None = None
    comment: Annotated[str, Field(max_length=4000)] | None = None


def _service(request: Request) -> ReviewService:
    service: ReviewService = request.app.state.reviews
    return service


def _reviewer(request: Request) -> str | None:
    """Who is reviewing: ``admin``, a reviewer key's id, or None (not a reviewer)."""
    identity = identity_of(request)
    if identity.is_admin:
        return "admin"
    if identity.key is not None and identity.key.role == "reviewer":
        return identity.key.id
    return None


def _must_review(request: Request) -> str:
    reviewer = _reviewer(request)
    if reviewer is None:
        raise PermissionDeniedError(
            "the review queue needs a reviewer or admin key", "authorization"
        )
    return reviewer


@router.get("/v1/reviews")
def list_reviews(
    request: Request,
    status: Annotated[str | None, Query()] = None,
    route: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[float | None, Query()] = None,
) -> dict[str, Any]:
    """Cases (``status=pending``: the queue, nearest deadline first; else newest first)."""
    _must_review(request)
    if status is not None and status not in STATUSES:
        raise APIError(400, f"status must be one of {', '.join(STATUSES)}", param="status")
    cases = _service(request).desk.store.find(status=status, route=route, limit=limit,
                                              before=before)  # fmt: skip
    return {"object": "list", "data": [review_object(c, reviewer_view=True) for c in cases]}


@router.get("/v1/reviews/{review_id}")
def get_review(review_id: str, request: Request) -> dict[str, Any]:
    """One case: whole for a reviewer; status and answer for the key that asked."""
    desk: ReviewDesk = _service(request).desk
    case = desk.get(review_id)
    if _reviewer(request) is not None:
        return review_object(case, reviewer_view=True)
    key = identity_of(request).key
    if key is None or key.id != case["key_id"]:
        raise PermissionDeniedError("this review belongs to another key", "review_id")
    return review_object(case, reviewer_view=False)


@router.post("/v1/reviews/{review_id}")
def decide_review(review_id: str, body: VerdictBody, request: Request) -> dict[str, Any]:
    """Decides a pending case (409 when it was decided already)."""
    reviewer = _must_review(request)
    service = _service(request)
    try:
        case = service.desk.decide(review_id, body.action, reviewer=reviewer,
                                   answer=body.answer, comment=body.comment)  # fmt: skip
    except ReviewClosedError as closed:
        raise APIError(409, str(closed), param="review_id", code="review_closed") from None
    service.nudge_threadsafe()
    return review_object(case, reviewer_view=True)


@router.get("/v1/checks/stats")
def check_stats(
    request: Request, since: float | None = None, route: str | None = None
) -> dict[str, Any]:
    """Per route, check and decision since ``since``: requests, cost, p50/p95 latency; per
    review check, the reviewers' verdicts and how often holding the answer was right."""
    _must_review(request)
    state: ServerState = request.app.state.inferline
    if state.traces is None:
        raise InvalidParameterError("this server keeps no request log", "checks")
    return decision_stats(state.traces.engine, since=since, route=route)


def reviews_extension(service: ReviewService) -> Extension:
    """The review queue as an app extension (its routes and its background service)."""
    return Extension(router, "reviews", service, service=service)
