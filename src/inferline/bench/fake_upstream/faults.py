"""Faults: the JSON grammar, the model-name grammar, and the FIFO scripts that hand them out.

A fault is a JSON object ``{"kind": K, ...params, "times": T}``; see the package docstring
for each kind's parameters. ``times`` is how many matching requests consume it (default 1;
``null``: every one until reset; ``flap`` defaults to ``null``).

Model-name grammar (a request's ``model`` picks its own fault)::

    model  := "fault:" step ("|" step)*
    step   := head [":" key "=" value ("," key "=" value)*]
    head   := (kind | NNN | "context_length_exceeded" | "content_filter") ["-once" | "-x" K]

``NNN`` is a status fault with that HTTP status; the two codes are 400 status faults with
that code. Steps are consumed in order by the requests carrying that exact model name; a
step without ``-once``/``-xK``/``times=`` applies forever. Values parse as ``null``/``none``,
``true``/``false``, integers, floats, else strings. Examples: ``fault:429-once:retry_after=1``
(one 429, then healthy), ``fault:cut:after=40``, ``fault:500-x2|stall-once:after=5,duration=1``.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MODEL_PREFIX = "fault:"
CODES = ("context_length_exceeded", "content_filter")
_PARAMS: dict[str, frozenset[str]] = {
    "ok": frozenset(),
    "status": frozenset({"status", "retry_after", "code", "message"}),
    "refuse_prefix": frozenset({"status", "message"}),
    "hang": frozenset(),
    "first_token_delay": frozenset({"delay"}),
    "cut": frozenset({"after"}),
    "stall": frozenset({"after", "duration"}),
    "malformed": frozenset({"after", "then"}),
    "no_done": frozenset({"finish"}),
    "flap": frozenset({"up", "down", "status", "retry_after"}),
    "content_filter_200": frozenset(),
    "tool_call": frozenset({"name", "arguments"}),
}
KINDS = tuple(_PARAMS)


class FaultError(ValueError):
    """A fault (JSON or model name) that does not follow the grammar."""


@dataclass(frozen=True)
class Fault:
    """One parsed fault; ``spec`` is its JSON as given (without ``times``), for the log."""

    kind: str
    status: int | None = None
    retry_after: float | None = None
    code: str | None = None
    message: str | None = None
    after: int | None = None
    delay: float = 0.0
    duration: float | None = 30.0
    then: str = "continue"
    finish: bool = True
    up: float = 1.0
    down: float = 1.0
    name: str = "lookup"
    arguments: str = "{}"
    spec: dict[str, Any] = field(default_factory=dict, compare=False)

    def down_at(self, since: float, now: float) -> bool:
        """For ``flap``: whether ``now`` falls in a 503 phase of a clock started at ``since``."""
        return (now - since) % (self.up + self.down) >= self.up


def _number(raw: dict[str, Any], key: str, default: float | None) -> float | None:
    value = raw.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaultError(f"{key} must be a non-negative number")
    return float(value)


def _integer(raw: dict[str, Any], key: str, low: int) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise FaultError(f"{key} must be an integer >= {low}")
    return value


def _status(raw: dict[str, Any], kind: str) -> int | None:
    status = _integer(raw, "status", 400)
    if status is not None and status > 599:
        raise FaultError("status must be an HTTP error status (400-599)")
    code = raw.get("code")
    if code is not None and not isinstance(code, str):
        raise FaultError("code must be a string")
    if kind == "status" and status is None:
        if code not in CODES:
            raise FaultError(f"a status fault needs 'status' or a code in {CODES}")
        status = 400
    return status


def parse_fault(raw: Any) -> tuple[Fault, int | None]:
    """Validates one fault's JSON; returns the fault and its ``times`` (None: forever)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("kind"), str):
        raise FaultError('a fault is a JSON object with a string "kind"')
    kind = raw["kind"]
    if kind not in _PARAMS:
        raise FaultError(f"unknown fault kind {kind!r}; kinds: {', '.join(KINDS)}")
    unknown = set(raw) - _PARAMS[kind] - {"kind", "times"}
    if unknown:
        raise FaultError(f"{kind} takes no {', '.join(sorted(unknown))}")
    times = _integer(raw, "times", 1) if "times" in raw else (None if kind == "flap" else 1)
    then = raw.get("then", "continue")
    if then not in ("continue", "stop"):
        raise FaultError('then must be "continue" or "stop"')
    message = raw.get("message")
    if message is not None and not isinstance(message, str):
        raise FaultError("message must be a string")
    name, arguments = raw.get("name", "lookup"), raw.get("arguments", "{}")
    if not isinstance(name, str) or not name or not isinstance(arguments, str):
        raise FaultError("tool_call needs a non-empty string name and string arguments")
    up, down = _number(raw, "up", 1.0), _number(raw, "down", 1.0)
    if not up or not down:
        raise FaultError("flap needs positive up and down seconds")
    fault = Fault(
        kind=kind,
        status=_status(raw, kind),
        retry_after=_number(raw, "retry_after", None),
        code=raw.get("code"),
        message=message,
        after=_integer(raw, "after", 0),
        delay=_number(raw, "delay", 0.0) or 0.0,
        duration=_number(raw, "duration", 30.0),
        then=then,
        finish=bool(raw.get("finish", True)),
        up=up,
        down=down,
        name=name,
        arguments=arguments,
        spec={k: v for k, v in raw.items() if k != "times"},
    )
    return fault, times


def _scalar(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("null", "none"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _parse_step(step: str) -> tuple[Fault, int | None]:
    head, _, args = step.partition(":")
    times: int | None = None
    suffix = re.fullmatch(r"(.+?)-(once|x(\d+))", head)
    if suffix:
        head, times = suffix[1], 1 if suffix[2] == "once" else int(suffix[3])
    raw: dict[str, Any] = {"kind": head}
    if head.isdecimal():
        raw = {"kind": "status", "status": int(head)}
    elif head in CODES:
        raw = {"kind": "status", "code": head}
    for pair in filter(None, args.split(",")):
        key, eq, value = pair.partition("=")
        if not eq:
            raise FaultError(f"expected key=value, got {pair!r}")
        raw[key.strip()] = _scalar(value.strip())
    raw.setdefault("times", times)
    return parse_fault(raw)


def parse_model_name(model: str) -> list[tuple[Fault, int | None]]:
    """The fault steps a ``fault:...`` model name scripts (see the module docstring)."""
    body = model[len(MODEL_PREFIX) :]
    if not body:
        raise FaultError("empty fault model name")
    try:
        return [_parse_step(step) for step in body.split("|")]
    except FaultError as exc:
        raise FaultError(f"model {model!r}: {exc}") from None


@dataclass
class _Entry:
    fault: Fault
    left: int | None
    since: float | None = None


@dataclass(frozen=True)
class Pick:
    """The fault chosen for one request; ``since`` starts ``flap``'s clock."""

    fault: Fault
    since: float
    source: str


def _take(queue: deque[_Entry], now: float) -> tuple[Fault, float]:
    entry = queue[0]
    if entry.since is None:
        entry.since = now
    if entry.left is not None:
        entry.left -= 1
        if entry.left <= 0:
            queue.popleft()
    return entry.fault, entry.since


class FaultBook:
    """The scripted faults: control-API queues per model (or ``*``) and model-name steps.

    A request with model M takes the head of M's script queue, else of the ``*`` queue,
    else (for a ``fault:`` name) the next model-name step, else no fault.
    """

    def __init__(self) -> None:
        self._scripts: dict[str, deque[_Entry]] = {}
        self._named: dict[str, deque[_Entry]] = {}

    def script(self, model: str, faults: list[Any]) -> int:
        """Appends ``faults`` (validated first, all or none) to ``model``'s queue."""
        parsed = [parse_fault(raw) for raw in faults]
        queue = self._scripts.setdefault(model, deque())
        queue.extend(_Entry(fault, times) for fault, times in parsed)
        return len(queue)

    def reset(self) -> None:
        """Forgets every script, model-name state and flap clock."""
        self._scripts.clear()
        self._named.clear()

    def pick(self, model: str, now: float) -> Pick | None:
        """Consumes the fault for one request to ``model`` (None: healthy)."""
        for key in (model, "*"):
            queue = self._scripts.get(key)
            if queue:
                return Pick(*_take(queue, now), source="script")
        if not model.startswith(MODEL_PREFIX):
            return None
        named = self._named.get(model)
        if named is None:
            steps = parse_model_name(model)
            named = self._named[model] = deque(_Entry(f, t) for f, t in steps)
        return Pick(*_take(named, now), source="model") if named else None

    def pending(self) -> dict[str, list[dict[str, Any]]]:
        """The queued script faults per model, with how many requests each has left."""
        return {
            model: [{**e.fault.spec, "times": e.left} for e in queue]
            for model, queue in self._scripts.items()
            if queue
        }
