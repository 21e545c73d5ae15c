"""The parts of a request's trace read from its outputs and route report: engine timings,
tool calls, the tool results it brought, and the ids and labels around it."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from inferline.core.outputs import RequestOutput, RouteReport


def engine_timings(outputs: Sequence[RequestOutput]) -> dict[str, Any]:
    """Prefill (first scheduled to first token), decode (first token to the end) and time
    per output token of the first output that has them, and preemptions over all. A remote
    target has no scheduling time: its prefill is None."""
    fields: dict[str, Any] = {
        "prefill_s": None,
        "decode_s": None,
        "tpot_s": None,
        "preemptions": sum(o.metrics.num_preemptions for o in outputs),
    }
    for output in outputs:
        m = output.metrics
        if m.first_token_s is None:
            continue
        if m.first_scheduled_s is not None:
            fields["prefill_s"] = max(0.0, m.first_token_s - m.first_scheduled_s)
        if m.finished_s is not None:
            decode = max(0.0, m.finished_s - m.first_token_s)
            fields["decode_s"] = decode
            longest = max((c.num_tokens for c in output.outputs), default=0)
            fields["tpot_s"] = decode / (longest - 1) if longest > 1 else None
        break
    return fields


def tool_calls_json(outputs: Sequence[RequestOutput], with_arguments: bool) -> str | None:
    """The calls the answer asked for: id and name (and arguments when text is logged)."""
    calls = []
    for output in outputs:
        for completion in output.outputs:
            for call in completion.tool_calls:
                item = {"id": call.id, "name": call.name}
                if with_arguments:
                    item["arguments"] = call.arguments
                calls.append(item)
    return json.dumps(calls) if calls else None


def tool_results_json(messages: Sequence[dict[str, Any]] | None) -> str | None:
    """The ``tool_call_id`` of every tool result in the request's messages, in order: what
    matches this request to the answer that asked for those calls (tool latency)."""
    ids = [m["tool_call_id"] for m in messages or () if m.get("role") == "tool"
           and isinstance(m.get("tool_call_id"), str)]  # fmt: skip
    return json.dumps(ids) if ids else None


def decision_fields(
    route: RouteReport | None, log_text: bool, redact: Callable[[str | None], str | None]
) -> dict[str, Any]:
    """What the route's checks decided, and every check's score (with the answer they
    withheld when text is logged)."""
    decision = route.decision if route is not None else None
    if decision is None:
        return {}
    checks: dict[str, Any] = {"outcomes": [c.as_dict() for c in decision.checks]}
    if log_text and decision.withheld is not None:
        checks["withheld"] = redact(decision.withheld)
    return {
        "decision": decision.decision,
        "decision_check": decision.check,
        "decision_score": decision.score,
        "review_id": decision.review_id,
        "checks": json.dumps(checks),
    }
