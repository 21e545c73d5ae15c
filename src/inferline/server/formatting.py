"""Response bodies and stream chunks in the OpenAI shapes."""

from __future__ import annotations

import json
from typing import Any

from inferline.core.outputs import CompletionOutput, Logprob, RequestOutput
from inferline.server.tool_parser import parse_tool_output


def usage(outputs: list[RequestOutput]) -> dict[str, Any]:
    """Token usage over one or more engine requests (a completions call may have several)."""
    prompt = sum(len(o.prompt_token_ids) for o in outputs)
    completion = sum(o.num_generated_tokens for o in outputs)
    cached = sum(o.metrics.num_cached_prompt_tokens for o in outputs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _token_bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def chat_logprobs(logprobs: list[Logprob]) -> dict[str, Any]:
    """``choices[i].logprobs`` of a chat completion."""
    content = [
        {
            "token": lp.token,
            "logprob": lp.logprob,
            "bytes": _token_bytes(lp.token),
            "top_logprobs": [
                {"token": text, "logprob": value, "bytes": _token_bytes(text)}
                for _, text, value in lp.top
            ],
        }
        for lp in logprobs
    ]
    return {"content": content, "refusal": None}


def completion_logprobs(logprobs: list[Logprob], text_offset_start: int) -> dict[str, Any]:
    """``choices[i].logprobs`` of a legacy completion."""
    offsets, position = [], text_offset_start
    for lp in logprobs:
        offsets.append(position)
        position += len(lp.token)
    return {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{text: value for _, text, value in lp.top} for lp in logprobs],
        "text_offset": offsets,
    }


def chat_choice(output: CompletionOutput, index: int, tool_mode: str = "none") -> dict[str, Any]:
    """One choice of a non-streaming chat completion (``tool_mode`` from the `ToolPlan`)."""
    message: dict[str, Any] = {"role": "assistant", "content": output.text, "tool_calls": []}
    finish_reason: str | None = output.finish_reason
    if tool_mode != "none":
        parsed = parse_tool_output(output.text)
        message.update(content=parsed.content, tool_calls=parsed.tool_calls)
        finish_reason = tool_finish_reason(finish_reason, len(parsed.tool_calls), tool_mode)
    return {
        "index": index,
        "message": message,
        "logprobs": chat_logprobs(output.logprobs) if output.logprobs is not None else None,
        "finish_reason": finish_reason,
    }


def tool_finish_reason(finish_reason: str | None, num_calls: int, tool_mode: str) -> str | None:
    """``tool_calls`` when a choice stopped after calling tools; OpenAI keeps ``stop`` for
    a named ``tool_choice``, and ``length`` stays ``length``."""
    if finish_reason == "stop" and num_calls and tool_mode != "named":
        return "tool_calls"
    return finish_reason


def completion_choice(output: CompletionOutput, index: int) -> dict[str, Any]:
    """One choice of a non-streaming legacy completion."""
    logprobs = completion_logprobs(output.logprobs, 0) if output.logprobs is not None else None
    return {
        "index": index,
        "text": output.text,
        "logprobs": logprobs,
        "finish_reason": output.finish_reason,
    }


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"
