"""A chat request that names a stored prompt: resolved and merged into the request.

The prompt's messages come first (rendered with the request's variables), then the
request's own; its route is the model unless the request names one; its sampling
parameters, response format and tools apply where the request does not set them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from inferline.core.errors import InvalidParameterError
from inferline.openai.schemas import ChatCompletionRequest
from inferline.prompts import ResolvedPrompt
from inferline.server.state import ServerState


async def apply_prompt(
    state: ServerState, body: ChatCompletionRequest
) -> tuple[ChatCompletionRequest, ResolvedPrompt | None]:
    """``body`` with its prompt merged in (or as it is, without one), and the prompt."""
    ref = body.prompt
    if ref is None:
        return body, None
    if state.prompts is None:
        raise InvalidParameterError("this server keeps no prompt registry", "prompt")
    resolved = await asyncio.to_thread(state.prompts.resolve, ref.id, ref.version, ref.variables)
    given = body.model_fields_set
    merged: dict[str, Any] = body.model_dump(exclude_unset=True, exclude={"prompt"})
    merged.update({k: v for k, v in resolved.params.items() if k not in given})
    for name in ("response_format", "tools"):
        value = getattr(resolved, name)
        if value is not None and name not in given:
            merged[name] = value
    merged["messages"] = [*resolved.messages, *merged.get("messages", [])]
    merged["model"] = body.model or resolved.route or ""
    if not merged["model"]:
        raise InvalidParameterError(
            f"prompt {ref.id!r} names no route: the request must name a model", "model"
        )
    return ChatCompletionRequest.model_validate(merged), resolved
