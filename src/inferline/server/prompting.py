"""A chat request that names a stored prompt: resolved and merged into the request.

The prompt's messages come first (rendered with the request's variables), then the
request's own; its route is the model unless the request names one; its sampling
parameters, response format and tools apply where the request does not set them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from inferline.core.errors import InvalidParameterError
from inferline.core.protocols import ChatTokenizer
from inferline.openai.schemas import ChatCompletionRequest
from inferline.prompts import PromptSpec, ResolvedPrompt
from inferline.prompts.registry import probe_renders
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


async def shared_prefix_tokens(generator: object, spec: PromptSpec) -> int | None:
    """How many leading prompt tokens every render of ``spec`` shares on its route's local
    model (None without a route or a local engine to tokenize with)."""
    if spec.route is None or not isinstance(generator, ChatTokenizer):
        return None
    first, second = probe_renders(spec)
    a = await generator.tokenize_chat(spec.route, first, spec.tools)
    b = await generator.tokenize_chat(spec.route, second, spec.tools)
    if a is None or b is None:
        return None
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
