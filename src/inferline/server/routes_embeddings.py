"""``POST /v1/embeddings`` (OpenAI-shaped) and ``POST /v1/predict/{model}``.

Both run micro-batched models: every row of a request is decoded first (a bad row is a 400
naming it), then the rows join the model's batcher, so concurrent requests share one model
call. The OpenAI SDK asks for ``encoding_format="base64"`` by default: float32 little-endian
bytes, base64-encoded, which it decodes back to floats.
"""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, field_validator

from inferline.core.predictor import Embedder
from inferline.openai.schemas import LenientModel
from inferline.server.errors import APIError
from inferline.server.predictors import decode_rows, new_trace
from inferline.server.state import ServerState

router = APIRouter()
MAX_INPUTS = 2048  # OpenAI's limit per embeddings request


class EmbeddingRequest(LenientModel):
    """The OpenAI embeddings body: a string, strings, token ids, or lists of token ids."""

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None

    @field_validator("input", mode="wrap")
    @classmethod
    def _one_message(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """One clear error for a bad ``input`` instead of one per union member."""
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(
                "expected a string, a list of strings, a list of token ids "
                "or a list of lists of token ids"
            ) from None


class PredictRequest(LenientModel):
    """Rows of features: each a list of numbers or an object keyed by feature name."""

    instances: Annotated[list[Any], Field(min_length=1, max_length=MAX_INPUTS)]
    user: str | None = None


def _inputs(raw: str | list[str] | list[int] | list[list[int]]) -> list[Any]:
    if isinstance(raw, str):
        return [raw]
    if not raw:
        raise APIError(400, "input must not be empty", param="input")
    if isinstance(raw[0], int):
        return [raw]
    if len(raw) > MAX_INPUTS:
        raise APIError(400, f"at most {MAX_INPUTS} inputs per request", param="input")
    return list(raw)


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


@router.post("/v1/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    """One unit vector per input, in order."""
    state: ServerState = request.app.state.inferline
    predictor = state.predictors.get(body.model, "embeddings")
    assert isinstance(predictor, Embedder)
    if body.dimensions is not None and body.dimensions != predictor.dimensions:
        raise APIError(
            400,
            f"{body.model} makes {predictor.dimensions}-dimensional vectors and cannot "
            f"shorten them (dimensions={body.dimensions})",
            param="dimensions",
        )
    rows = decode_rows(predictor, _inputs(body.input), "input")
    trace = new_trace("embd", "/v1/embeddings", body.model, body.user)
    trace.num_rows, trace.num_tokens = len(rows), sum(len(ids) for ids in rows)
    if isinstance(body.input, str) or (body.input and isinstance(body.input[0], str)):
        texts = [body.input] if isinstance(body.input, str) else body.input
        trace.input_text = "\x1e".join(str(t) for t in texts)
    vectors = await state.predictors.run(request, state.observer, trace, rows)
    state.observer.finish_rows(trace, 200)
    usage = {"prompt_tokens": trace.num_tokens, "total_tokens": trace.num_tokens}
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    return {"object": "list", "data": data, "model": body.model, "usage": usage}


@router.post("/v1/predict/{model}")
async def predict(model: str, body: PredictRequest, request: Request) -> dict[str, Any]:
    """One prediction object per row, in order."""
    state: ServerState = request.app.state.inferline
    predictor = state.predictors.get(model, "predict")
    rows = decode_rows(predictor, body.instances, "instances")
    trace = new_trace("pred", "/v1/predict", model, body.user)
    trace.num_rows = len(rows)
    trace.input_text = json.dumps(body.instances)
    results = await state.predictors.run(request, state.observer, trace, rows)
    trace.output_text = json.dumps(results)
    state.observer.finish_rows(trace, 200)
    return {"object": "list", "model": model, "predictions": results}
