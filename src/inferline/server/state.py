"""What every route needs, kept on ``app.state.inferline``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from inferline.core.protocols import Generator
from inferline.server.config import ServerConfig
from inferline.server.metrics import Metrics
from inferline.server.observe import Observer
from inferline.server.predictors import PredictorPool

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
    reload: Reload | None = None
    is_draining: bool = False
