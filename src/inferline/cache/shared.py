"""`RedisAnswers`: the exact-key entries of the response cache in Redis, shared by every
gateway process.

An entry is its outputs as JSON (no pickle: what is read back from a shared server is
data, never code) under ``<prefix>:cache:<route>:<exact key>``, with the route's
``ttl_s`` as Redis's expiry; Redis evicts (set ``maxmemory`` and an LRU policy on the
server: a route's ``max_entries`` bounds only the copy in each process). Semantic lookups
stay per process: the embeddings of the entries a process stored are kept in its own
`AnswerStore`, and a semantic hit there replays that process's copy.

The client is a ``redis.Redis`` made by the CLI; this module never imports ``redis``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict
from typing import Any

from inferline.cache.store import Entry
from inferline.core.outputs import (
    CompletionOutput,
    Logprob,
    RequestMetrics,
    RequestOutput,
    ToolCall,
    ToolCallDelta,
)

logger = logging.getLogger(__name__)
_PENDING: set[asyncio.Future[Any]] = set()


class RedisAnswers:
    """Exact-key answers in Redis (reads and writes off the event loop)."""

    def __init__(self, client: Any, prefix: str = "inferline") -> None:
        self.client = client
        self.prefix = prefix

    def _name(self, route: str, key: str) -> str:
        return f"{self.prefix}:cache:{route}:{key}"

    async def get(self, route: str, key: str, now_s: float) -> Entry | None:
        """The entry of ``key`` (None: none, or Redis is unreachable: a miss)."""
        try:
            text = await asyncio.to_thread(self.client.get, self._name(route, key))
        except Exception:  # the cache is an optimisation: a failure is a miss
            logger.warning("response cache: reading Redis failed", exc_info=True)
            return None
        return None if text is None else decode(text, now_s)

    def put(self, route: str, key: str, entry: Entry, ttl_s: float) -> None:
        """Stores ``entry`` for ``ttl_s`` seconds, in the background."""
        name, text, ttl_ms = self._name(route, key), encode(entry), max(1, int(ttl_s * 1000))

        def write() -> None:
            try:
                self.client.set(name, text, px=ttl_ms)
            except Exception:
                logger.warning("response cache: writing Redis failed", exc_info=True)

        try:
            future = asyncio.get_running_loop().run_in_executor(None, write)
        except RuntimeError:
            write()
            return
        _PENDING.add(future)
        future.add_done_callback(_PENDING.discard)


def encode(entry: Entry) -> str:
    """An entry's outputs and model as JSON (its semantic fields stay in the process)."""
    outputs = [asdict(o) for o in entry.outputs]
    return json.dumps({"model": entry.model, "outputs": outputs}, separators=(",", ":"))


def decode(text: str, now_s: float) -> Entry:
    """The entry `encode` wrote (its age starts now: Redis keeps its expiry)."""
    data = json.loads(text)
    outputs = tuple(_output(o) for o in data["outputs"])
    return Entry(outputs, data["model"], now_s)


def _logprob(data: dict[str, Any]) -> Logprob:
    top = tuple((int(t[0]), str(t[1]), float(t[2])) for t in data.get("top", ()))
    return Logprob(data["token_id"], data["token"], data["logprob"], top)


def _completion(data: dict[str, Any]) -> CompletionOutput:
    logprobs = data.get("logprobs")
    return CompletionOutput(
        **{
            **data,
            "logprobs": None if logprobs is None else [_logprob(p) for p in logprobs],
            "tool_calls": [ToolCall(**c) for c in data.get("tool_calls", [])],
            "tool_call_deltas": [ToolCallDelta(**d) for d in data.get("tool_call_deltas", [])],
        }
    )


def _output(data: dict[str, Any]) -> RequestOutput:
    prompt_logprobs = data.get("prompt_logprobs")
    return RequestOutput(
        **{
            **data,
            "outputs": [_completion(c) for c in data["outputs"]],
            "metrics": RequestMetrics(**data["metrics"]),
            "route": None,
            "prompt_logprobs": None
            if prompt_logprobs is None
            else [None if p is None else _logprob(p) for p in prompt_logprobs],
        }
    )
