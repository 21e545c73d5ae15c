"""Generator outputs -> Anthropic message objects.

``model`` names the model that produced the answer (``RequestOutput.model``: after a
fallback, the fallback), as the OpenAI endpoints do. ``usage.input_tokens`` counts the
prompt tokens that were not read from the prefix cache: Anthropic's total input is
``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``, and our prefix
cache costs nothing to write, so ``cache_creation_input_tokens`` is always 0.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

from inferline.core.errors import StreamInterruptedError
from inferline.core.outputs import CompletionOutput, RequestOutput, ToolCall


def new_message_id() -> str:
    """``msg_`` and 24 random hex digits (the request id too)."""
    return f"msg_{secrets.token_hex(12)}"


def stop_reason(
    completion: CompletionOutput, stop_sequences: Sequence[str]
) -> tuple[str, str | None]:
    """``stop_reason`` and ``stop_sequence`` of a finished completion.

    ``stop_sequence`` is the stop string the engine (or a vLLM upstream) reports in
    ``CompletionOutput.stop_reason``; an upstream that does not report it ends as
    ``end_turn``.
    """
    finish = completion.finish_reason
    if finish == "length":
        return "max_tokens", None
    if finish == "content_filter":
        return "refusal", None
    if completion.tool_calls:
        return "tool_use", None
    matched = completion.stop_reason
    if isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return "end_turn", None


def usage(outputs: Sequence[RequestOutput]) -> dict[str, int]:
    """Token usage, Anthropic's way (see the module docstring)."""
    prompt = sum(o.num_prompt_tokens for o in outputs)
    cached = min(prompt, sum(o.metrics.num_cached_prompt_tokens for o in outputs))
    return {
        "input_tokens": prompt - cached,
        "output_tokens": sum(o.num_generated_tokens for o in outputs),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def tool_input(call: ToolCall) -> dict[str, Any]:
    """A call's arguments as the JSON object Anthropic's ``input`` is. Local models write
    them under a grammar; an upstream's that are not an object are its failure (502)."""
    try:
        value = json.loads(call.arguments or "{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise StreamInterruptedError(
            f"the model's arguments for the tool {call.name!r} are not a JSON object"
        )
    return value


def content_blocks(completion: CompletionOutput) -> list[dict[str, Any]]:
    """The text (when there is any besides whitespace) and then one block per call."""
    blocks: list[dict[str, Any]] = []
    if completion.text.strip() or (completion.text and not completion.tool_calls):
        blocks.append({"type": "text", "text": completion.text})
    for call in completion.tool_calls:
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input(call)}
        )
    return blocks


def message(
    message_id: str, model: str, outputs: list[RequestOutput], stop_sequences: Sequence[str]
) -> dict[str, Any]:
    """The whole ``message`` object of a finished request (``model``: the one asked for,
    used when the output does not name its own)."""
    completion = outputs[0].outputs[0]
    reason, sequence = stop_reason(completion, stop_sequences)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "content": content_blocks(completion),
        "model": outputs[0].model or model,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(outputs),
    }
