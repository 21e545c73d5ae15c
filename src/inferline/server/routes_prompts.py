"""``/v1/prompts``: the prompt registry over HTTP.

Writing (a version, a label move) needs an admin key; any key reads. A version is named by
its number or a label (``/v1/prompts/{id}/versions/production``). The store is synchronous:
FastAPI runs these off the loop.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict

from inferline.core.errors import InvalidParameterError, NotFoundError, PermissionDeniedError
from inferline.guard.parse import prompt_checks
from inferline.prompts import PromptRegistry, PromptSpec
from inferline.prompts.spec import Label
from inferline.server.prompting import shared_prefix_tokens
from inferline.server.state import ServerState
from inferline.server.tenancy import identity_of

router = APIRouter()


class LabelBody(BaseModel):
    """``POST /v1/prompts/{id}/labels``: point ``label`` at ``version``."""

    model_config = ConfigDict(extra="forbid")
    label: Label
    version: Annotated[int, "a version number"]


def _registry(request: Request, write: bool = False) -> PromptRegistry:
    state: ServerState = request.app.state.inferline
    if write and not identity_of(request).is_admin:
        raise PermissionDeniedError("changing prompts needs an admin key", "authorization")
    if state.prompts is None:
        raise InvalidParameterError("this server keeps no prompt registry", "prompts")
    return state.prompts


@router.post("/v1/prompts")
async def push_prompt(body: PromptSpec, request: Request) -> dict[str, Any]:
    """A new version (unless it equals the latest: then that one, ``created`` false), with
    the static prefix its requests share measured on its route's local model."""
    registry = _registry(request, write=True)
    state: ServerState = request.app.state.inferline
    prompt_checks(body.checks or ())  # a bad check is a 400 now, not at its first request
    prefix = await shared_prefix_tokens(state.generator, body)
    return await asyncio.to_thread(registry.push, body, prefix)


@router.get("/v1/prompts")
def list_prompts(request: Request) -> dict[str, Any]:
    """Every prompt: id, latest version, labels."""
    rows = _registry(request).store.prompts()
    data = [{"id": r["prompt_id"], "object": "prompt", "latest_version": r["latest"],
             "updated_at": r["updated_at"], "labels": r["labels"]} for r in rows]  # fmt: skip
    return {"object": "list", "data": data}


@router.get("/v1/prompts/{prompt_id}")
def get_prompt(prompt_id: str, request: Request) -> dict[str, Any]:
    """Every version of a prompt, its labels and their moves."""
    return _registry(request).describe(prompt_id)


@router.get("/v1/prompts/{prompt_id}/versions/{version}")
def get_version(prompt_id: str, version: str, request: Request) -> dict[str, Any]:
    """One version, by number or label."""
    registry = _registry(request)
    number, label = registry.version_of(prompt_id, version)
    return {"id": prompt_id, "object": "prompt.version", "label": label,
            **registry.version_view(prompt_id, number)}  # fmt: skip


@router.post("/v1/prompts/{prompt_id}/labels")
def move_label(prompt_id: str, body: LabelBody, request: Request) -> dict[str, Any]:
    """Points a label at a version (moving it back is the rollback)."""
    registry = _registry(request, write=True)
    before = registry.store.move_label(prompt_id, body.label, body.version)
    return {"id": prompt_id, "object": "prompt.label", "label": body.label,
            "version": body.version, "previous_version": before,
            "labels": registry.store.label_map(prompt_id)}  # fmt: skip


@router.get("/v1/prompts/{prompt_id}/diff")
def diff_versions(
    prompt_id: str,
    request: Request,
    old: Annotated[int, Query(alias="from", ge=1)],
    new: Annotated[int, Query(alias="to", ge=1)],
) -> dict[str, Any]:
    """A unified diff of two versions."""
    registry = _registry(request)
    if registry.store.version(prompt_id) is None:
        raise NotFoundError(f"no prompt {prompt_id!r}", "prompt_id")
    return {"id": prompt_id, "from": old, "to": new, "diff": registry.diff(prompt_id, old, new)}
