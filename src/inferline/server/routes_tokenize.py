"""``POST /tokenize`` and ``POST /detokenize`` (vLLM's shapes), on the model or route named.

Answered by the generator's `inferline.core.TextTokenizer` side (a local engine, or the
route's first local target); a model served only by a remote upstream cannot tokenize: a
400 naming ``model``. A virtual key may use only its own routes here too (403).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from inferline.core.protocols import detokenize, tokenize
from inferline.openai.tokenize import (
    DetokenizeBody,
    DetokenizeResponse,
    TokenizeBody,
    TokenizeResponse,
)
from inferline.server.state import ServerState
from inferline.server.tenancy import identity_of

router = APIRouter()

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid body, or a model that cannot tokenize (param: model).",
          "content": _ERROR},
    403: {"description": "The API key may not use this model or route.", "content": _ERROR},
    404: {"description": "Unknown model or route.", "content": _ERROR},
}  # fmt: skip


def _check_access(request: Request, state: ServerState, model: str) -> None:
    key = identity_of(request).key
    if key is not None:
        state.tenants.check_access(key, model or state.generator.models()[0].name)


@router.post("/tokenize", responses=_RESPONSES)
async def tokenize_text(body: TokenizeBody, request: Request) -> TokenizeResponse:
    """The token ids of a prompt, or of messages rendered with the model's chat template."""
    state: ServerState = request.app.state.inferline
    _check_access(request, state, body.model)
    return TokenizeResponse.of(await tokenize(state.generator, body.to_request()))


@router.post("/detokenize", responses=_RESPONSES)
async def detokenize_tokens(body: DetokenizeBody, request: Request) -> DetokenizeResponse:
    """The text of token ids (special tokens kept)."""
    state: ServerState = request.app.state.inferline
    _check_access(request, state, body.model)
    return DetokenizeResponse(prompt=await detokenize(state.generator, body.model, body.tokens))
