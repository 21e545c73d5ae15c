"""OpenAI request bodies -> `SamplingParams`; anything we cannot honour is an
`InvalidParameterError` (a 400 naming the field)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from inferline.core.errors import InvalidParameterError
from inferline.core.sampling_params import MODEL_DEFAULT_FIELDS, SamplingParams
from inferline.core.structured import StructuredOutput
from inferline.core.tool_calls import ToolCalling
from inferline.openai.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields


def _not_supported(param: str, what: str) -> InvalidParameterError:
    return InvalidParameterError(f"{what} is not supported yet", param, "unsupported_parameter")


def _structured(
    body: SamplingFields,
    response_format: dict[str, Any] | None,
    tool_calling: ToolCalling | None = None,
) -> StructuredOutput | None:
    """Tool calls, ``response_format`` or a ``guided_*`` extension (vLLM's names), if any."""
    if response_format is not None and response_format.get("type") == "text":
        response_format = None
    if tool_calling is not None and response_format is not None:
        return _tools_with_answer_format(body, tool_calling, _response_format(response_format))
    asked = [
        name
        for name, value in (
            ("tools", tool_calling),
            ("response_format", response_format),
            ("guided_json", body.guided_json),
            ("guided_regex", body.guided_regex),
            ("guided_choice", body.guided_choice),
        )
        if value is not None
    ]
    if len(asked) > 1:
        raise InvalidParameterError(
            f"at most one of {', '.join(asked)} per request", param=asked[1]
        )
    if tool_calling is not None:
        return tool_calling.to_structured()
    if body.guided_json is not None:
        return StructuredOutput("json_schema", json.dumps(body.guided_json), "guided_json")
    if body.guided_regex is not None:
        return StructuredOutput("regex", body.guided_regex, "guided_regex")
    if body.guided_choice is not None:
        return StructuredOutput("choice", json.dumps(body.guided_choice), "guided_choice")
    return None if response_format is None else _response_format(response_format)


def _tools_with_answer_format(
    body: SamplingFields, calling: ToolCalling, answer: StructuredOutput
) -> StructuredOutput:
    """Tools and a ``response_format``: in ``auto``, a text answer must follow the format
    (calls stay possible); ``required`` and named choices write calls only, so the format
    has nothing to constrain."""
    if body.guided_json or body.guided_regex or body.guided_choice:
        raise InvalidParameterError("guided_* cannot be combined with tools", param="tools")
    if calling.mode != "auto":
        return calling.to_structured()
    schema = answer.spec or '{"type": "object"}'  # json_object: any object
    return dataclasses.replace(calling, answer_schema=schema).to_structured()


def _response_format(response_format: dict[str, Any]) -> StructuredOutput:
    kind = response_format.get("type")
    if kind == "json_object":
        return StructuredOutput("json_object")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidParameterError(
                "response_format.json_schema.schema must be a JSON Schema object",
                param="response_format.json_schema.schema",
            )
        return StructuredOutput("json_schema", json.dumps(schema), "response_format")
    raise InvalidParameterError(
        f"response_format.type must be text, json_object or json_schema, got {kind!r}",
        param="response_format.type",
    )


def _logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    """OpenAI's ``{"token id": bias}`` as pairs; a key that is not a token id is a 400."""
    pairs = []
    for key, value in (bias or {}).items():
        if not (key.isascii() and key.isdigit()):
            raise InvalidParameterError(
                f"logit_bias: keys must be token ids (non-negative integers), got {key!r}",
                "logit_bias",
            )
        pairs.append((int(key), value))
    return tuple(pairs)


def _common(
    body: SamplingFields,
    max_tokens: int | None,
    logprobs: int | None,
    response_format: dict[str, Any] | None = None,
    tool_calling: ToolCalling | None = None,
) -> SamplingParams:
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    chosen = {name: getattr(body, name) for name in MODEL_DEFAULT_FIELDS}
    unset = tuple(name for name, value in chosen.items() if value is None)
    return SamplingParams(
        n=body.n,
        max_tokens=max_tokens,
        **{name: value for name, value in chosen.items() if value is not None},
        unset_fields=unset,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=_logit_bias(body.logit_bias),
        min_tokens=body.min_tokens,
        seed=body.seed,
        stop=stop,
        stop_token_ids=tuple(body.stop_token_ids or ()),
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        structured=_structured(body, response_format, tool_calling),
    )


def chat_sampling_params(
    body: ChatCompletionRequest, tool_calling: ToolCalling | None = None
) -> SamplingParams:
    """Sampling for a chat request; raises `InvalidParameterError` for unsupported features.

    ``tool_calling`` (from `plan_tools`) becomes the request's grammar; with a
    ``response_format`` in ``auto`` mode, a text answer must follow that format; it cannot
    be combined with a ``guided_*`` field.
    """
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidParameterError(
            "top_logprobs requires logprobs to be true", param="top_logprobs"
        )
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    max_tokens = body.max_completion_tokens or body.max_tokens
    return _common(body, max_tokens, logprobs, body.response_format, tool_calling)


def completion_sampling_params(body: CompletionRequest) -> SamplingParams:
    """Sampling for a legacy completions request.

    ``echo`` with ``logprobs`` asks for the prompt's logprobs too; ``max_tokens: 0`` (only
    with ``echo``) samples one token, which the response drops (`inferline.openai.echo`).
    """
    if body.suffix:
        raise _not_supported("suffix", "suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise _not_supported("best_of", "best_of different from n")
    max_tokens = 16 if body.max_tokens is None else body.max_tokens  # the OpenAI default
    if max_tokens == 0:
        if not body.echo:
            raise InvalidParameterError(
                "max_tokens must be at least 1 (0 is allowed with echo: the prompt alone)",
                "max_tokens",
            )
        max_tokens = 1
    params = _common(body, max_tokens, body.logprobs)
    if body.echo and body.logprobs is not None:
        params = dataclasses.replace(params, prompt_logprobs=body.logprobs)
    return params
