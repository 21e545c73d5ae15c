"""What every route needs, kept on ``app.state.inferline``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from inferline.core.protocols import Generator, ModelInfo
from inferline.prompts import PromptRegistry
from inferline.server.config import ServerConfig
from inferline.server.metrics import Metrics
from inferline.server.observe import Observer
from inferline.server.predictors import PredictorPool
from inferline.store.traces import TraceStore
from inferline.tenants import Tenants

Reload = Callable[[], Awaitable[dict[str, Any]]]


@dataclass
class ServerState:
    """The generator, the micro-batched models, settings and observers of one app.

    ``reload`` (given by the CLI when the server runs from a config file) re-reads the
    config and swaps routes and models in; it raises `InvalidParameterError` for a bad new
    config, leaving the old one in place.
    """

    generator: Generator
    config: ServerConfig
    metrics: Metrics
    observer: Observer
    predictors: PredictorPool
    tenants: Tenants
    reload: Reload | None = None
    traces: TraceStore | None = None  # the request log's traces, when there is a log
    prompts: PromptRegistry | None = None  # in the same database
    is_draining: bool = False
    last_reload: dict[str, Any] | None = None  # when the config was last reloaded, and how
    _infos: dict[str, ModelInfo] = field(default_factory=dict)
    _infos_at: float = -1.0

    def model_info(self, name: str) -> ModelInfo | None:
        """A route's or model's info (prices, locality), read at most once a second."""
        now = time.monotonic()
        if now - self._infos_at > 1.0:
            self._infos = {info.name: info for info in self.generator.models()}
            self._infos_at = now
        return self._infos.get(name)
