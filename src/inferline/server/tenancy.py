"""The request side of virtual keys: admit a request for its key (route, rate limits,
budget) before it is submitted, and the headers that say where the key stands."""

from __future__ import annotations

import dataclasses
from typing import Any

from starlette.requests import Request

from inferline.core.errors import LimitExceededError, PermissionDeniedError
from inferline.core.protocols import GenerationRequest, ModelInfo
from inferline.server.state import ServerState
from inferline.tenants import Admission, Estimate, Identity, KeyPolicy


def identity_of(request: Request) -> Identity:
    """Who is calling (set by the guard middleware)."""
    identity = request.scope.get("state", {}).get("identity")
    return identity if isinstance(identity, Identity) else Identity(is_admin=True)


async def admit(
    state: ServerState, request: Request, model: str, generations: list[GenerationRequest]
) -> tuple[list[GenerationRequest], Admission | None]:
    """Admits the requests of one HTTP request for its key; returns them with the key's
    spend guard (and a lowered ``max_tokens`` where the budget asked for it)."""
    key = identity_of(request).key
    if key is None:
        return generations, None
    try:
        return await _admit(state, key, model, generations)
    except (LimitExceededError, PermissionDeniedError) as refused:
        status = "429" if isinstance(refused, LimitExceededError) else "403"
        state.metrics.key_requests.labels(state.metrics.key_label(key.id), status).inc()
        raise


async def _admit(
    state: ServerState, key: KeyPolicy, model: str, generations: list[GenerationRequest]
) -> tuple[list[GenerationRequest], Admission]:
    state.tenants.check_access(key, model)
    info = state.model_info(model) or ModelInfo(model)
    params = generations[0].params
    copies = len(generations) * params.n
    estimate = Estimate(
        sum(g.estimated_prompt_tokens() for g in generations),
        None if params.max_tokens is None else params.max_tokens * copies,
    )
    admission = await state.tenants.admit(key, generations[0].request_id, info, estimate)
    new_params = params
    if admission.max_tokens != estimate.max_tokens and admission.max_tokens is not None:
        each = max(1, admission.max_tokens // copies)
        new_params = dataclasses.replace(params, max_tokens=each)
    admitted = [dataclasses.replace(g, spend=admission, params=new_params) for g in generations]
    return admitted, admission


def key_headers(state: ServerState, admission: Admission | None) -> dict[str, Any]:
    """The ``x-ratelimit-*`` headers of the request's key, and what its budget changed."""
    if admission is None:
        return {}
    return {**state.tenants.headers(admission.key), **admission.headers}
