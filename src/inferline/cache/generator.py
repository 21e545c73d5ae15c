"""`CachedGenerator`: a response cache in front of the routes (a `Generator` wrapping one).

A hit replays the cached outputs as they were streamed (a stream stays a stream) with a
route report that has no attempts: it costs nothing, and says ``cache: hit`` or
``semantic-hit`` (with the similarity). A miss goes to the wrapped generator; its answer is
stored if it finished whole (``stop`` or ``length``, not cut by a budget), with no error.

Entries live in the process (`store.AnswerStore`); with `share` (gateway replicas on one
Redis) exact-key entries also go to Redis (`shared.RedisAnswers`), so an answer stored by
one process is a hit in every other; semantic lookups stay per process.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence

from inferline.cache.guards import matches
from inferline.cache.keys import exact_key, last_user_message, semantic_context
from inferline.cache.policy import CachePolicy
from inferline.cache.shared import RedisAnswers
from inferline.cache.store import AnswerStore, Entry
from inferline.core.errors import InvalidParameterError
from inferline.core.outputs import RequestMetrics, RequestOutput, RouteReport
from inferline.core.protocols import GenerationRequest, Generator
from inferline.core.wrapping import GeneratorWrapper

Embed = Callable[[str], Awaitable[Sequence[float]]]  # text -> unit vector


@dataclasses.dataclass(frozen=True)
class _Lookup:
    """What a request looks like to the cache."""

    policy: CachePolicy
    key: str
    context: str | None = None
    vector: tuple[float, ...] | None = None
    message: str = ""


class CachedGenerator(GeneratorWrapper):
    """Implements `inferline.core.Generator`: answers repeated questions from a cache,
    the rest from ``inner`` (the router). ``policies`` by route or model name."""

    def __init__(
        self,
        inner: Generator,
        policies: Mapping[str, CachePolicy],
        embedders: Mapping[str, Embed] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(inner)
        self.policies = dict(policies)
        self.embedders = dict(embedders or {})
        self.clock = clock
        self._stores = {
            name: AnswerStore(p.max_entries, p.ttl_s, clock) for name, p in self.policies.items()
        }
        self.shared: RedisAnswers | None = None

    def share(self, answers: RedisAnswers | None) -> None:
        """Keeps exact-key entries in Redis too (every process on it sees them)."""
        self.shared = answers

    def set_policies(self, policies: Mapping[str, CachePolicy]) -> None:
        """New policies (a reload): a route whose policy changed starts empty."""
        stores = {}
        for name, policy in policies.items():
            same = self.policies.get(name) == policy and name in self._stores
            stores[name] = (
                self._stores[name]
                if same
                else AnswerStore(policy.max_entries, policy.ttl_s, self.clock)
            )
        self.policies, self._stores = dict(policies), stores

    def size(self, name: str) -> int:
        """How many answers a route's cache holds."""
        store = self._stores.get(name)
        return 0 if store is None else len(store)

    async def submit(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        """A replay on a hit; otherwise the wrapped stream, recorded on the way."""
        name = request.model or (self.inner.models()[0].name if self.inner.models() else "")
        lookup = await self._lookup(name, request)
        if lookup is not None and request.cache == "default":
            replay = await self._replay(name, lookup, request)
            if replay is not None:
                return replay
        stream = await self.inner.submit(request)
        store = lookup is not None and request.cache != "no-store"
        policy = self.policies.get(name)
        has_cache = policy is not None and policy.mode != "off"
        return self._recorded(name, lookup if store else None, stream, has_cache)

    async def _lookup(self, name: str, request: GenerationRequest) -> _Lookup | None:
        policy = self.policies.get(name)
        if policy is None or policy.mode == "off":
            return None
        params = request.params
        deterministic = params.is_greedy or params.seed is not None
        if params.n != 1 or (policy.deterministic_only and not deterministic):
            return None
        scope = "shared" if policy.shared else f"key:{request.key_id or '-'}"
        lookup = _Lookup(policy, exact_key(request, scope, policy.revision))
        if policy.mode != "semantic":
            return lookup
        found = last_user_message(request)
        context = semantic_context(request, scope, policy.revision)
        if found is None or context is None:
            return lookup
        vector = await self._embed(policy, found[1])
        return dataclasses.replace(lookup, context=context, vector=vector, message=found[1])

    async def _embed(self, policy: CachePolicy, text: str) -> tuple[float, ...] | None:
        embed = self.embedders.get(policy.embedding_model)
        if embed is None:
            return None
        try:
            return tuple(float(x) for x in await embed(text))
        except InvalidParameterError:
            return None  # too long to embed: exact matching only

    async def _replay(
        self, name: str, lookup: _Lookup, request: GenerationRequest
    ) -> AsyncGenerator[RequestOutput, None] | None:
        store = self._stores[name]
        entry, similarity = store.get(lookup.key), None
        if entry is None and self.shared is not None:
            entry = await self.shared.get(name, lookup.key, self.clock())
        if entry is None and lookup.context is not None and lookup.vector is not None:
            guard = lookup.policy.guard
            nearest = store.nearest(
                lookup.context, lookup.vector, lambda e: matches(guard, e.message, lookup.message)
            )
            if nearest is not None and nearest[1] >= lookup.policy.threshold:
                entry, similarity = store.get(nearest[0]), nearest[1]
        if entry is None:
            return None
        report = RouteReport(name, target="cache", model=entry.model)
        report.cache = "hit" if similarity is None else "semantic-hit"
        report.cache_similarity = similarity
        return _replayed(request.request_id, entry, report)

    async def _recorded(
        self,
        name: str,
        lookup: _Lookup | None,
        stream: AsyncGenerator[RequestOutput, None],
        has_cache: bool,
    ) -> AsyncGenerator[RequestOutput, None]:
        """The stream, kept for the cache when ``lookup`` says so; a route with a cache
        marks its report ``miss`` (one without leaves it None: no cache was asked)."""
        kept: list[RequestOutput] = []
        try:
            async for output in stream:
                if output.route is not None and has_cache:
                    output.route.cache = "miss"
                if lookup is not None:
                    kept.append(_stored(output))
                yield output
        finally:
            await stream.aclose()
        if lookup is not None and kept and _whole(kept[-1]):
            entry = Entry(
                tuple(kept),
                kept[-1].model,
                self.clock(),
                lookup.context,
                lookup.vector,
                lookup.message,
            )
            self._stores[name].put(lookup.key, entry)
            if self.shared is not None:
                self.shared.put(name, lookup.key, entry, lookup.policy.ttl_s)


def _stored(output: RequestOutput) -> RequestOutput:
    """A copy safe to keep (no token ids, nothing the producer may still change)."""
    completions = [
        dataclasses.replace(c, token_ids=[], token_ids_delta=[], tool_calls=list(c.tool_calls))
        for c in output.outputs
    ]
    return dataclasses.replace(output, prompt_token_ids=[], outputs=completions, route=None)


def _whole(output: RequestOutput) -> bool:
    route = output.route
    finished = output.finished and all(
        c.finish_reason in ("stop", "length") for c in output.outputs
    )
    return finished and (route is None or not route.stopped_by)


async def _replayed(
    request_id: str, entry: Entry, report: RouteReport
) -> AsyncGenerator[RequestOutput, None]:
    metrics = RequestMetrics(time.time(), first_scheduled_s=time.time())
    prompt_tokens = entry.outputs[-1].num_prompt_tokens
    metrics.num_cached_prompt_tokens = prompt_tokens  # all of it came from the cache
    for output in entry.outputs:
        metrics.first_token_s = metrics.first_token_s or time.time()
        completions = [dataclasses.replace(c) for c in output.outputs]
        yield dataclasses.replace(
            output, request_id=request_id, outputs=completions, metrics=metrics, route=report
        )
