"""One-pass models beside the LLM: each behind its own `DynamicBatcher`.

Routes look a model up by name and task, decode every row of the request before anything is
queued (so bad input is a 400 naming the row and field), submit the rows to the model's
batcher, and report the request with the ids of the batches its rows ran in.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from inferline.batching import BatcherConfig, BatchReport, DynamicBatcher
from inferline.core.predictor import Predictor, Task
from inferline.server.disconnect import CLIENT_CLOSED, ClientDisconnected, until_disconnect
from inferline.server.errors import APIError, api_error_from
from inferline.server.metrics import Metrics
from inferline.server.observe import Observer, RowsTrace


@dataclass(frozen=True)
class PredictorEntry:
    """A set-up predictor and how to batch it (built by the CLI from the models file)."""

    predictor: Predictor
    batching: BatcherConfig


class PredictorPool:
    """The served predictors by name, each with a batcher feeding the batch metrics."""

    def __init__(self, entries: Sequence[PredictorEntry], metrics: Metrics) -> None:
        self.entries = {e.predictor.name: e for e in entries}
        self.batchers: dict[str, DynamicBatcher[Any, Any]] = {
            name: DynamicBatcher(
                entry.predictor.predict, entry.batching, self._reporter(name, metrics)
            )
            for name, entry in self.entries.items()
        }

    @staticmethod
    def _reporter(name: str, metrics: Metrics) -> Any:
        def report(batch: BatchReport) -> None:
            metrics.observe_batch(name, batch)

        return report

    async def start(self) -> None:
        """Starts every batcher (on the server's event loop)."""
        for batcher in self.batchers.values():
            await batcher.start()

    async def stop(self) -> None:
        """Stops every batcher; waiting requests fail with 503."""
        for batcher in self.batchers.values():
            await batcher.stop()

    def names(self) -> list[str]:
        """Served predictor names, in the models file's order."""
        return list(self.entries)

    def get(self, name: str, task: Task) -> Predictor:
        """The predictor called ``name``: 404 if none, 400 if it does another task."""
        entry = self.entries.get(name)
        if entry is None:
            served = [n for n, e in self.entries.items() if e.predictor.task == task]
            raise APIError(
                404,
                f"The model {name!r} does not exist. Available for {task}: "
                f"{', '.join(served) or 'none (declare models with --config)'}.",
                type="not_found_error",
                param="model",
                code="model_not_found",
            )
        if entry.predictor.task != task:
            route = (
                "/v1/embeddings" if entry.predictor.task == "embeddings" else f"/v1/predict/{name}"
            )
            raise APIError(
                400,
                f"The model {name!r} serves {entry.predictor.task}; use {route}.",
                param="model",
                code="wrong_model_task",
            )
        return entry.predictor

    async def run(
        self,
        request: Request,
        observer: Observer,
        trace: RowsTrace,
        rows: list[Any],
    ) -> list[Any]:
        """Results of ``rows`` (already decoded), observed; raises `APIError` on failure."""
        batcher = self.batchers[trace.model]
        try:
            results, batch_ids = await until_disconnect(batcher.submit_traced(rows), request)
        except ClientDisconnected:
            observer.finish_rows(trace, CLIENT_CLOSED, error="client disconnected")
            gone = APIError(CLIENT_CLOSED, "client disconnected")
            gone.is_logged = True
            raise gone from None
        except Exception as exc:
            error = api_error_from(exc)
            observer.finish_rows(trace, error.status_code, error=error.message)
            error.is_logged = True
            raise error from exc
        trace.batch_ids = batch_ids
        return results


def decode_rows(predictor: Predictor, raw_rows: list[Any], field: str) -> list[Any]:
    """Every row decoded, or the first bad one as an `InvalidParameterError`."""
    return [predictor.decode(raw, f"{field}[{i}]") for i, raw in enumerate(raw_rows)]


def new_trace(prefix: str, endpoint: str, model: str, user: str | None) -> RowsTrace:
    """A trace for one embeddings or predict request."""
    return RowsTrace(f"{prefix}-{uuid.uuid4().hex}", endpoint, model, user, time.perf_counter())
