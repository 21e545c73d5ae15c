"""What every route needs, kept on ``app.state.inferline``."""

from __future__ import annotations

from dataclasses import dataclass

from inferline.core.protocols import Generator
from inferline.server.config import ServerConfig
from inferline.server.errors import APIError
from inferline.server.observe import Metrics, Observer
from inferline.server.predictors import PredictorPool


@dataclass
class ServerState:
    """The generator, the micro-batched models, settings and observers of one app."""

    generator: Generator
    config: ServerConfig
    metrics: Metrics
    observer: Observer
    predictors: PredictorPool
    is_draining: bool = False

    def check_model(self, name: str) -> None:
        """404 unless ``name`` is one of the served model names."""
        if name not in self.config.served_model_names:
            raise APIError(
                404,
                f"The model {name!r} does not exist. Available: "
                f"{', '.join(self.config.served_model_names)}.",
                type="not_found_error",
                param="model",
                code="model_not_found",
            )
