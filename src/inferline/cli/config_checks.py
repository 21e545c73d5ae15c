"""A route's ``checks:``: the cascade's acceptance checks (for the router) and the checks
that abstain, hold for review or block (for `inferline.guard`).

```yaml
routes:
  - name: ops-agent
    strategy: cascade
    targets: [small, large]
    checks:
      - {on: input, kind: classifier, model: minilm, examples: ["delete every account"],
         above: 0.8, action: abstain}
      - {on: input, kind: pattern, detectors: [credit_card, iban], action: block}
      - {on: output, kind: logprob, min_mean: -1.5, action: escalate}   # the cascade's
      - {on: output, kind: logprob, min_mean: -2.5, action: abstain}
      - {on: tool_call, tools: [delete_account, refund], action: review, deadline_s: 3600}
    abstain_text: "I can't answer that reliably."
    review_text: "A person will check this answer."
    on_review_expiry: abstain     # or allow
```

An entry without ``on``/``action`` is a cascade check as before (``{kind: logprob_mean,
threshold: -0.8}``). ``escalate`` is for output checks of a cascade route: the next target
answers (``logprob`` with ``min_mean``/``min_token``, ``json_schema``, ``pattern`` with a
``pattern``).
"""

from __future__ import annotations

from typing import Any

from inferline.cli.config_fields import build, fail, mapping, value
from inferline.core.errors import InvalidParameterError
from inferline.guard import GuardCheck, GuardPolicy
from inferline.guard.parse import CHECK_KEYS, check_from_dict, is_guard_entry, with_on
from inferline.router.config import CheckConfig

_CASCADE_KEYS = {"kind", "threshold", "pattern", "model"}
ROUTE_KEYS = {"abstain_text", "review_text", "on_review_expiry"}


def cascade_checks(items: list[Any], place: str) -> tuple[CheckConfig, ...]:
    """The router's checks: the old form, and ``escalate`` output checks."""
    checks: list[CheckConfig] = []
    for i, raw in enumerate(items):
        where = f"{place}[{i}]"
        entry = with_on(mapping(raw, where))
        if not is_guard_entry(entry):
            checks.append(_cascade(mapping(entry, where, _CASCADE_KEYS), where))
        elif entry.get("action") == "escalate":
            checks += _escalation(_guard_check(entry, where, i), where)
    return tuple(checks)


def guard_policy(entry: dict[str, Any], place: str, route: str) -> GuardPolicy | None:
    """The route's guard: its checks that are not the cascade's (None when it has none)."""
    items = value(entry, "checks", list, place, [])
    checks = []
    for i, raw in enumerate(items):
        where = f"{place}.checks[{i}]"
        item = with_on(mapping(raw, where))
        if is_guard_entry(item) and item.get("action") != "escalate":
            checks.append(_guard_check(item, where, i))
    if not checks:
        for key in ROUTE_KEYS & set(entry):
            raise fail(f"{place}.{key}", "only routes with checks that abstain or review use it")
        return None
    fields: dict[str, Any] = {"route": route, "checks": tuple(checks)}
    for key in ROUTE_KEYS:
        if key in entry:
            fields[key] = value(entry, key, str, place)
    return build(GuardPolicy, fields, place)


def _cascade(entry: dict[str, Any], place: str) -> CheckConfig:
    fields = {
        "kind": value(entry, "kind", str, place),
        "threshold": value(entry, "threshold", float, place, 0.0),
        "pattern": value(entry, "pattern", str, place, ""),
        "model": value(entry, "model", str, place, ""),
    }
    return build(CheckConfig, fields, place)


def _guard_check(raw: dict[str, Any], place: str, index: int) -> GuardCheck:
    try:
        return check_from_dict(raw, index)
    except InvalidParameterError as error:
        param = error.param if error.param in CHECK_KEYS else None
        where = f"{place}.{param}" if param else place
        message = error.message.removeprefix(f"{param}: ")
        raise fail(where, message) from error


def _escalation(check: GuardCheck, place: str) -> list[CheckConfig]:
    """An ``escalate`` check as the router's acceptance checks."""
    if check.on != "output" or check.kind not in ("logprob", "json_schema", "pattern"):
        raise fail(f"{place}.action", "escalate takes output checks: logprob, json_schema, pattern")
    if check.kind == "json_schema":
        return [CheckConfig("json_schema")]
    if check.kind == "pattern":
        if check.detectors or not check.pattern:
            raise fail(f"{place}.pattern", "escalate on a pattern needs pattern (no detectors)")
        return [CheckConfig("regex", pattern=check.pattern)]
    if check.max_entropy is not None:
        raise fail(f"{place}.max_entropy", "escalate reads min_mean and min_token")
    out = []
    if check.min_mean is not None:
        out.append(CheckConfig("logprob_mean", threshold=check.min_mean))
    if check.min_token is not None:
        out.append(CheckConfig("logprob_min", threshold=check.min_token))
    return out
