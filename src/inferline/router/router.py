"""`Router`: one `Generator` over routes of targets (local engines, remote upstreams).

A request's ``model`` names a route, or a model entry directly (each model entry is also a
route of its own name with a single target). The router is the only retry loop of the
system: targets never retry by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from inferline.core.errors import CannotTokenizeError, InvalidParameterError, UnknownModelError
from inferline.core.outputs import RequestOutput
from inferline.core.protocols import (
    ChatTokenizer,
    GenerationRequest,
    GeneratorStats,
    HealthReport,
    ModelInfo,
    TextTokenizer,
    Tokenized,
    TokenizeRequest,
    detokenize,
    tokenize,
)
from inferline.router.checks import Scorer
from inferline.router.config import RetryPolicy, RouteConfig, TargetRef
from inferline.router.health import Clock
from inferline.router.routed import RoutedRequest
from inferline.router.strategies import plan
from inferline.router.target import Target


@dataclass(frozen=True)
class _Table:
    """The routes and targets in force (replaced whole on reload)."""

    targets: dict[str, Target]
    routes: dict[str, RouteConfig]
    configured: frozenset[str]  # route names from the config (the others are model entries)
    default: str


def _table(
    targets: Sequence[Target], routes: Sequence[RouteConfig], scorers: Mapping[str, Scorer]
) -> _Table:
    by_name = {t.name: t for t in targets}
    if len(by_name) != len(targets):
        raise InvalidParameterError("two model entries have the same name", "models")
    table: dict[str, RouteConfig] = {}
    for index, route in enumerate(routes):
        where = f"routes[{index}]"
        if route.name in by_name or route.name in table:
            raise InvalidParameterError(
                f"{where}.name: {route.name!r} is already the name of a model or route",
                f"{where}.name",
            )
        for position, ref in enumerate(route.targets):
            if ref.name not in by_name:
                raise InvalidParameterError(
                    f"{where}.targets[{position}]: unknown model {ref.name!r}",
                    f"{where}.targets[{position}]",
                )
        for position, check in enumerate(route.checks):
            if check.kind == "similarity" and check.model not in scorers:
                raise InvalidParameterError(
                    f"{where}.checks[{position}].model: {check.model!r} is not a "
                    "sentence-embeddings model of this server",
                    f"{where}.checks[{position}].model",
                )
        table[route.name] = route
    for target in targets:  # each model entry answers to its own name, without retries
        table[target.name] = RouteConfig(
            target.name, (TargetRef(target.name),), retry=RetryPolicy(attempts=1)
        )
    if not table:
        raise InvalidParameterError("at least one model is needed", "models")
    default = routes[0].name if routes else targets[0].name
    return _Table(by_name, table, frozenset(r.name for r in routes), default)


class Router:
    """Implements `inferline.core.Generator` over routes (see the module docstring)."""

    def __init__(
        self,
        targets: Sequence[Target],
        routes: Sequence[RouteConfig] = (),
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        scorers: Mapping[str, Scorer] | None = None,
    ) -> None:
        self.scorers = dict(scorers or {})
        self._table = _table(targets, routes, self.scorers)
        self.clock = clock
        self.rng = rng or random.Random()
        self._running: dict[str, RoutedRequest] = {}
        self._started = False

    @property
    def targets(self) -> dict[str, Target]:
        """The targets in force, by name."""
        return self._table.targets

    async def start(self) -> None:
        """Starts every target."""
        self._started = True
        for target in self._table.targets.values():
            await target.generator.start()

    async def shutdown(self, drain_timeout_s: float) -> None:
        """Lets running requests finish (up to the timeout), then stops every target."""
        await asyncio.gather(
            *(t.generator.shutdown(drain_timeout_s) for t in self._table.targets.values())
        )

    async def replace(
        self, targets: Sequence[Target], routes: Sequence[RouteConfig]
    ) -> list[Target]:
        """Puts new routes and targets in force (new targets are started first); returns
        the targets no longer used, for the caller to drain and stop. Requests already
        running finish on the targets they started with."""
        table = _table(targets, routes, self.scorers)  # raises before anything changes
        old = self._table.targets
        for target in table.targets.values():
            if self._started and old.get(target.name) is not target:
                await target.generator.start()
        self._table = table
        kept = set(map(id, table.targets.values()))
        return [t for t in old.values() if id(t) not in kept]

    async def submit(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        """Finds the route; the attempts start when the stream is first read."""
        table = self._table
        name = request.model or table.default
        route = table.routes.get(name)
        if route is None:
            raise UnknownModelError.not_served(name, sorted(table.routes))
        targets = [table.targets[ref.name] for ref in route.targets]
        order = plan(route, targets, request, self.rng)
        routed = RoutedRequest(
            route, order, request, clock=self.clock, rng=self.rng, scorers=self.scorers
        )
        return self._stream(request.request_id, routed)

    async def _stream(
        self, request_id: str, routed: RoutedRequest
    ) -> AsyncGenerator[RequestOutput, None]:
        self._running[request_id] = routed
        try:
            # closed here, not by the garbage collector: a client that leaves must see its
            # attempts recorded (and charged) before its request is logged
            async with contextlib.aclosing(routed.stream()) as outputs:
                async for output in outputs:
                    yield output
        finally:
            self._running.pop(request_id, None)

    async def abort(self, request_id: str) -> None:
        """Ends a running request (its target's stream is closed, its KV blocks freed)."""
        routed = self._running.get(request_id)
        if routed is not None:
            routed.abort()

    async def tokenize_chat(
        self, model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> list[int] | None:
        """The prompt ids on the route's first local target that can tell (None: none can,
        or no such route)."""
        route = self._table.routes.get(model)
        for ref in route.targets if route is not None else ():
            target = self._table.targets[ref.name]
            if target.is_local and isinstance(target.generator, ChatTokenizer):
                return await target.generator.tokenize_chat(target.model_name, messages, tools)
        return None

    async def tokenize(self, request: TokenizeRequest) -> Tokenized:
        """The tokens on the route's first local target (a remote upstream cannot tell)."""
        target = self._tokenizing_target(request.model)
        return await tokenize(
            target.generator, dataclasses.replace(request, model=target.model_name)
        )

    async def detokenize(self, model: str, token_ids: list[int]) -> str:
        """The text on the route's first local target (a remote upstream cannot tell)."""
        target = self._tokenizing_target(model)
        return await detokenize(target.generator, target.model_name, token_ids)

    def _tokenizing_target(self, model: str) -> Target:
        table = self._table
        name = model or table.default
        route = table.routes.get(name)
        if route is None:
            raise UnknownModelError.not_served(name, sorted(table.routes))
        for ref in route.targets:
            target = table.targets[ref.name]
            if target.is_local and isinstance(target.generator, TextTokenizer):
                return target
        raise CannotTokenizeError(name, "it is served by remote upstreams only")

    def models(self) -> list[ModelInfo]:
        """Routes from the config first (the default one leading), then the model entries."""
        table = self._table
        infos = []
        for name, route in table.routes.items():
            targets = [table.targets[ref.name] for ref in route.targets]
            lengths = [t.max_model_len for t in targets if t.max_model_len is not None]
            statuses = tuple(
                t.status(ref.weight if route.strategy == "weighted" else None)
                for t, ref in zip(targets, route.targets, strict=True)
            )
            is_route = name in table.configured
            prices = [t.config.price for t in targets]
            infos.append(
                ModelInfo(
                    name,
                    "route" if is_route else "model",
                    max(lengths) if lengths else None,
                    strategy=route.strategy if is_route else None,
                    targets=statuses,
                    input_usd_per_mtok=max(p.input_per_mtok for p in prices),
                    cached_input_usd_per_mtok=max(p.cached_per_mtok for p in prices),
                    output_usd_per_mtok=max(t.reserve_output_per_mtok() for t in targets),
                    is_local=all(t.is_local for t in targets),
                )
            )
        infos.sort(key=lambda info: (info.name != table.default, info.kind != "route"))
        return infos

    def health(self) -> HealthReport:
        """Not live when a local engine is dead or stalled; remote targets are the
        breakers' concern, not the process's."""
        for target in self._table.targets.values():
            if not target.is_local:
                continue
            report = target.generator.health()
            if not report.is_live or not report.is_ready:
                return HealthReport(report.is_live, False, f"{target.name}: {report.reason}")
        return HealthReport(True, True, "ok")

    def stats(self) -> dict[str, GeneratorStats]:
        """Each target's load, by model entry name."""
        return {name: target.stats() for name, target in self._table.targets.items()}
