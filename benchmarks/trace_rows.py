"""Synthetic request-log rows for `trace_store.py`: routes, keys in teams, tasks, prompt
versions, errors, latencies and text, as a real gateway's log would hold them."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from dataclasses import dataclass, field
from typing import Any

from inferline.store import (
    AttemptRecord,
    RequestRecord,
)

DAY = 86_400.0
REQUEST_COLUMNS = [f.name for f in dataclasses.fields(RequestRecord)]
ATTEMPT_COLUMNS = [f.name for f in dataclasses.fields(AttemptRecord)]

# route: (weight, targets in fallback order, local engine?, cache on the route?)
ROUTES: dict[str, tuple[float, tuple[str, ...], bool, bool]] = {
    "chat": (40, ("gpt-4o-mini", "claude-haiku"), False, True),
    "support-bot": (20, ("smollm2-135m", "gpt-4o-mini"), True, True),
    "code": (15, ("qwen2.5-coder-0.5b", "gpt-4o"), True, False),
    "summarize": (10, ("gpt-4o-mini",), False, True),
    "rag": (7, ("claude-sonnet", "gpt-4o"), False, False),
    "batch-eval": (5, ("smollm2-135m",), True, False),
    "translate": (2, ("gpt-4o-mini", "claude-haiku"), False, False),
    "legal": (1, ("gpt-4o", "claude-sonnet"), False, False),
}
TEAMS = ("search", "support", "growth", "platform", "data", "mobile", "web", "ml", "legal",
         "finance")  # fmt: skip
PROMPTS = ("support-triage", "summarize-ticket", "sql-writer", "rag-answer", "code-review")
# status: (weight, error text, attempt error type)
ERRORS: dict[int, tuple[float, str, str]] = {
    429: (1.0, "rate limit exceeded for key", "rate_limited"),
    502: (0.6, "all targets failed: upstream returned 502", "upstream_5xx"),
    503: (0.4, "all targets failed: every target cooling down", "unavailable"),
    400: (0.5, "max_tokens: must be at most 4096", "invalid_request"),
    504: (0.3, "deadline exceeded after 60 s", "timeout"),
    499: (0.2, "client disconnected", "aborted"),
}
COMMON_WORD = "invoice"  # in ~2% of prompts
RARE_WORD = "kubernetes"  # in ~0.05% of prompts
MISSING_WORD = "xylophone-zebra"  # in none: the worst case, a whole scan
M011_INDEXES = ("ix_requests_route_id", "ix_requests_status_id", "ix_requests_team_id",
                "ix_requests_model_id", "ix_requests_total_time")  # fmt: skip
SCHEMAS = {"m001-m011": (), "m001-m010": M011_INDEXES}  # the bursts' schemas: indexes dropped


def hex_id(n: int) -> str:
    """``n`` random bytes as hex (ids, trace ids)."""
    return os.urandom(n).hex()


def corpus(rng: random.Random, size: int = 1 << 21) -> str:
    """About ``size`` characters of English-like words to cut prompts and outputs from."""
    from inferline.bench import WORDS

    words = [rng.choice(WORDS) for _ in range(size // 4)]
    return " ".join(words)


@dataclass
class Keys:
    """~50 virtual keys with Zipf-like traffic, each in one of 10 teams."""

    ids: list[str]
    teams: list[str]
    cum_weights: list[float]

    @classmethod
    def make(cls, rng: random.Random, n: int = 50) -> Keys:
        """``n`` keys; key i gets weight 1 / (i + 1) ** 0.8."""
        ids = [f"key_{rng.getrandbits(64):016x}" for _ in range(n)]
        teams = [TEAMS[i % len(TEAMS)] for i in range(n)]
        weights = [1 / (i + 1) ** 0.8 for i in range(n)]
        cum = [sum(weights[: i + 1]) for i in range(n)]
        return cls(ids, teams, cum)


@dataclass
class RowMaker:
    """Realistic request rows (as dicts of column values) and their attempts.

    ``text``: whether prompt and output text is logged; ``prompt_bytes`` / ``output_bytes``
    are the mean sizes (log-normal around them).
    """

    rng: random.Random
    text: bool = True
    prompt_bytes: int = 1000
    output_bytes: int = 500
    keys: Keys = field(init=False)
    words: str = field(init=False)
    _routes: list[str] = field(init=False)
    _route_cum: list[float] = field(init=False)
    _errors: list[int] = field(init=False)
    _error_cum: list[float] = field(init=False)
    _task: tuple[str, int, int] | None = None  # (task id, key index, requests left)

    def __post_init__(self) -> None:
        self.keys = Keys.make(self.rng)
        self.words = corpus(self.rng)
        self._routes = list(ROUTES)
        self._route_cum = _cumulative([ROUTES[r][0] for r in self._routes])
        self._errors = list(ERRORS)
        self._error_cum = _cumulative([ERRORS[s][0] for s in self._errors])

    def row(
        self, created_at: float, progress: float
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One request (``progress``: 0 at the oldest row, 1 at the newest) and its attempts."""
        rng = self.rng
        route = rng.choices(self._routes, cum_weights=self._route_cum)[0]
        _, targets, local, cached = ROUTES[route]
        key, task_id = self._key_and_task()
        status, error = self._status()
        total = min(300.0, rng.lognormvariate(math.log(1.5), 0.9))
        if status != 200:
            total = min(total, rng.lognormvariate(math.log(0.3), 1.0))
        prompt_tokens = int(rng.lognormvariate(math.log(400), 0.8)) + 5
        completion = 0 if status != 200 else int(rng.lognormvariate(math.log(150), 0.7)) + 1
        request_id = f"chatcmpl-{hex_id(16)}"
        attempts = self._attempts(request_id, targets, status, created_at, total)
        row = {
            "request_id": request_id,
            "created_at": created_at,
            "model": route,
            "endpoint": "/v1/chat/completions" if rng.random() < 0.85 else "/v1/completions",
            "status_code": status,
            "finish_reason": None
            if status != 200
            else ("stop" if rng.random() < 0.9 else "length"),
            "error": error,
            "prompt": self._text(self.prompt_bytes, prompt=True),
            "output": self._text(self.output_bytes) if status == 200 else None,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "cached_tokens": int(prompt_tokens * rng.random() * 0.5) if local else 0,
            "queue_time_s": rng.expovariate(50) if local else None,
            "ttft_s": None if status != 200 else min(total, rng.lognormvariate(math.log(0.3), 0.6)),
            "total_time_s": total,
            "user_id": f"user-{rng.randrange(5000)}" if rng.random() < 0.6 else None,
            "batch_ids": None,
            "route": route,
            "target": attempts[-1]["target"] if status == 200 else None,
            "num_attempts": len(attempts),
            "fallback_reason": "upstream_5xx" if len(attempts) > 1 and status == 200 else None,
            "cost_usd": sum(a["cost_usd"] for a in attempts),
            "key_id": None if key is None else self.keys.ids[key],
            "team": None if key is None else self.keys.teams[key],
            "task_id": task_id,
            **self._trace_columns(route, local, cached, status, total, completion, progress),
        }
        return row, attempts

    def record(self, created_at: float) -> tuple[RequestRecord, tuple[AttemptRecord, ...]]:
        """The same row as the records the server hands to `RequestLogWriter`."""
        row, attempts = self.row(created_at, 1.0)
        return RequestRecord(**row), tuple(AttemptRecord(**a) for a in attempts)

    def _key_and_task(self) -> tuple[int | None, str | None]:
        """A key (None: an admin request, 5%) and the task it belongs to, if any."""
        rng = self.rng
        if self._task is not None:
            task_id, key, left = self._task
            self._task = (task_id, key, left - 1) if left > 1 else None
            return key, task_id
        if rng.random() < 0.05:
            return None, None
        key = rng.choices(range(len(self.keys.ids)), cum_weights=self.keys.cum_weights)[0]
        if rng.random() < 0.08:  # ~40% of requests end up in tasks of 2-10
            task_id = f"task-{hex_id(8)}"
            self._task = (task_id, key, rng.randint(1, 9))
            return key, task_id
        return key, None

    def _status(self) -> tuple[int, str | None]:
        if self.rng.random() >= 0.03:
            return 200, None
        status = self.rng.choices(self._errors, cum_weights=self._error_cum)[0]
        return status, ERRORS[status][1]

    def _attempts(
        self, request_id: str, targets: tuple[str, ...], status: int, start: float, total: float
    ) -> list[dict[str, Any]]:
        """1 attempt (85%), 2 (12%) or 3 (3%); only the last can succeed."""
        rng = self.rng
        draw = rng.random()
        n = 1 if draw < 0.85 else 2 if draw < 0.97 else 3
        error_type = ERRORS[status][2] if status != 200 else "upstream_5xx"
        attempts, at = [], start
        for i in range(n):
            ok = status == 200 and i == n - 1
            duration = total / n
            attempts.append({
                "request_id": request_id, "attempt": i + 1,
                "target": targets[min(i, len(targets) - 1)],
                "reason": "first" if i == 0 else rng.choice(("retry", "fallback")),
                "started_at": at, "status": "ok" if ok else "error",
                "ttft_s": duration * 0.2 if ok else None, "duration_s": duration,
                "error_type": None if ok else error_type,
                "error": None if ok else "upstream returned 502 Bad Gateway",
                "prompt_tokens": rng.randrange(20, 2000), "completion_tokens": rng.randrange(200),
                "cost_usd": rng.random() * 0.002, "cached_tokens": 0,
                "engine_s": duration if ok else None,
            })  # fmt: skip
            at += duration
        return attempts

    def _trace_columns(
        self, route: str, local: bool, cached: bool, status: int, total: float,
        completion: int, progress: float,
    ) -> dict[str, Any]:  # fmt: skip
        """Trace context, cache outcome, prompt version, engine timings, tools, metadata."""
        rng = self.rng
        prompt_id = version = label = None
        if rng.random() < 0.3:
            home = PROMPTS[list(ROUTES).index(route) % len(PROMPTS)]
            prompt_id = home if rng.random() < 0.7 else rng.choice(PROMPTS)
            version = 1 + min(3, int(progress * 4 + rng.random() * 0.5))
            label = "production" if rng.random() < 0.9 else "canary"
        decode = total * 0.8 if local and status == 200 else None
        tool = rng.random() < 0.1 and status == 200
        return {
            "trace_id": hex_id(16),
            "span_id": hex_id(8),
            "parent_span_id": hex_id(8) if rng.random() < 0.3 else None,
            "cache": None if not cached else rng.choices(("miss", "hit", "semantic-hit"),
                                                          (80, 15, 5))[0],  # fmt: skip
            "stopped_by": "budget" if rng.random() < 0.002 else None,
            "prompt_id": prompt_id,
            "prompt_version": version,
            "prompt_label": label,
            "prefill_s": total * 0.1 if decode else None,
            "decode_s": decode,
            "tpot_s": decode / completion if decode and completion else None,
            "preemptions": 1 if local and rng.random() < 0.01 else 0,
            "tool_calls": json.dumps([{"id": f"call_{hex_id(6)}", "name": "search_docs"}])
            if tool else None,
            "tool_results": None,
            "metadata": json.dumps({"env": "prod", "tier": rng.choice(("free", "pro"))})
            if rng.random() < 0.2 else None,
            **self._decision(),
        }  # fmt: skip

    def _decision(self) -> dict[str, Any]:
        """A route's checks: on a fifth of the requests; 3% of those abstain, 1% review."""
        draw = self.rng.random()
        if draw >= 0.2:
            return {"decision": None, "decision_check": None, "decision_score": None,
                    "review_id": None, "checks": None}  # fmt: skip
        decision = "abstain" if draw < 0.006 else "pending_review" if draw < 0.008 else "allow"
        check = None if decision == "allow" else "logprob-1"
        outcomes = [{"check": "logprob-1", "fired": bool(check)}]
        return {"decision": decision, "decision_check": check,
                "decision_score": -2.5 if check else None,
                "review_id": f"rev_{hex_id(12)}" if decision == "pending_review" else None,
                "checks": json.dumps({"outcomes": outcomes})}  # fmt: skip

    def _text(self, mean_bytes: int, prompt: bool = False) -> str | None:
        """A slice of the corpus of about ``mean_bytes`` (log-normal), with planted words."""
        if not self.text:
            return None
        rng = self.rng
        size = min(len(self.words) // 2, int(rng.lognormvariate(math.log(mean_bytes), 0.5)))
        start = rng.randrange(len(self.words) - size)
        text = self.words[start : start + size]
        if prompt:
            draw = rng.random()
            if draw < 0.02:
                text = f"{text} {COMMON_WORD}"
            elif draw < 0.0205:
                text = f"{RARE_WORD} {text}"
        return text


def _cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return out
