"""``/admin/keys``: virtual keys (create, list, read, change, revoke) and their usage.

Admin keys only (the server's ``--api-key``s; the guard refuses virtual keys). A key's
secret is in the response to its creation and nowhere else, ever: it is stored as a hash.
The routes are plain functions (the store is synchronous; FastAPI runs them off the loop).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from inferline.core.errors import InvalidParameterError, NotFoundError
from inferline.server.state import ServerState
from inferline.store.keys import KeyStore
from inferline.tenants import KeyPolicy

router = APIRouter()
Positive = Annotated[int, Field(ge=1)]


class BudgetBody(BaseModel):
    """A key's budget: ``amount_usd`` per ``period``; ``policy`` when it runs short."""

    model_config = ConfigDict(extra="forbid")
    amount_usd: Annotated[float, Field(gt=0)]
    period: Literal["day", "month", "total"] = "month"
    policy: Literal["refuse", "lower_max_tokens"] = "refuse"


class KeyBody(BaseModel):
    """``POST /admin/keys`` (``PATCH`` takes the same fields, each optional)."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    routes: list[Annotated[str, Field(min_length=1)]] | None = None
    rpm: Positive | None = None
    tpm: Positive | None = None
    max_parallel: Positive | None = None
    budget: BudgetBody | None = None
    expires_at: float | None = None
    metadata: dict[str, Any] | None = None
    role: Literal["user", "reviewer"] | None = None


def _store(request: Request) -> KeyStore:
    state: ServerState = request.app.state.inferline
    if state.tenants.store is None:
        raise InvalidParameterError("this server keeps no key store", "keys")
    return state.tenants.store


def _columns(body: KeyBody, fields: set[str]) -> dict[str, Any]:
    """The table's columns for the fields the body sets."""
    columns = {k: getattr(body, k) for k in fields if k != "budget"}
    if "budget" in fields:
        budget = body.budget
        columns["budget_usd"] = budget.amount_usd if budget else None
        columns["budget_period"] = budget.period if budget else None
        columns["budget_policy"] = budget.policy if budget else "refuse"
    return columns


def key_object(row: dict[str, Any]) -> dict[str, Any]:
    """A key as the API shows it (no hash, no secret)."""
    budget = None
    if row.get("budget_usd") is not None:
        budget = {
            "amount_usd": row["budget_usd"],
            "period": row.get("budget_period") or "month",
            "policy": row.get("budget_policy") or "refuse",
        }
    fields = ("name", "key_hint", "routes", "rpm", "tpm", "max_parallel", "expires_at")
    role = row.get("role") or "user"
    return {
        "id": row["id"],
        "object": "api_key",
        **{k: row.get(k) for k in fields},
        "budget": budget,
        "revoked_at": row.get("revoked_at"),
        "metadata": row.get("metadata") or {},
        "role": role,
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def _changed(request: Request, row: dict[str, Any] | None, key_id: str) -> dict[str, Any]:
    if row is None:
        raise NotFoundError(f"No such API key: {key_id!r}", "key_id")
    state: ServerState = request.app.state.inferline
    state.tenants.reload()  # in force at once (revoked keys are refused from now on)
    return key_object(row)


@router.post("/admin/keys")
def create_key(body: KeyBody, request: Request) -> dict[str, Any]:
    """A new key; its ``key`` (the secret) is in this response only."""
    if body.name is None:
        raise InvalidParameterError("name is required", "name")
    columns = _columns(body, body.model_fields_set | {"name"})
    KeyPolicy.from_row({"id": "new", **columns})  # raises naming a bad field
    row, secret = _store(request).create(columns)
    return {**_changed(request, row, row["id"]), "key": secret}


@router.get("/admin/keys")
def list_keys(request: Request) -> dict[str, Any]:
    """Every key, newest first (revoked ones too)."""
    return {"object": "list", "data": [key_object(r) for r in _store(request).all()]}


@router.get("/admin/keys/{key_id}")
def retrieve_key(key_id: str, request: Request) -> dict[str, Any]:
    """One key."""
    row = _store(request).get(key_id)
    if row is None:
        raise NotFoundError(f"No such API key: {key_id!r}", "key_id")
    return key_object(row)


@router.patch("/admin/keys/{key_id}")
def update_key(key_id: str, body: KeyBody, request: Request) -> dict[str, Any]:
    """Changes the fields the body sets (``"budget": null`` removes the budget)."""
    store = _store(request)
    current = store.get(key_id)
    if current is None:
        raise NotFoundError(f"No such API key: {key_id!r}", "key_id")
    columns = _columns(body, body.model_fields_set)
    KeyPolicy.from_row({**current, **columns})  # raises naming a bad field
    return _changed(request, store.update(key_id, columns), key_id)


@router.delete("/admin/keys/{key_id}")
def revoke_key(key_id: str, request: Request) -> dict[str, Any]:
    """Revokes a key at once; its spend history stays."""
    return {**_changed(request, _store(request).revoke(key_id), key_id), "deleted": True}


@router.get("/admin/keys/{key_id}/usage")
def key_usage(
    key_id: str, request: Request, days: Annotated[int, Query(ge=1, le=366)] = 31
) -> dict[str, Any]:
    """Spend against the budget now, and spend, tokens and requests by day and route."""
    state: ServerState = request.app.state.inferline
    store = _store(request)
    row = store.get(key_id)
    if row is None:
        raise NotFoundError(f"No such API key: {key_id!r}", "key_id")
    policy = KeyPolicy.from_row(row)
    period = None
    if policy.budget_usd is not None:
        start = policy.period_start()
        period = {
            "budget_usd": policy.budget_usd,
            "period": policy.budget_period,
            "period_start": start,
            "spend_usd": store.spent_since(key_id, start),
            "reserved_usd": state.tenants.ledger.reserved(policy),
        }
    rows = store.usage(key_id, time.time() - days * 86400)
    return {"object": "key_usage", "key_id": key_id, "budget": period, "data": rows}
