"""A batch file on a Ray cluster (Ray Data): the same lines, over engine replicas as actors.

The driver turns the lines into a Ray Dataset, split into blocks, mapped by replicas
(`map_batches` with ``concurrency=replicas``). Each replica builds the app in process with
the given factory, exactly as a local run does, so a greedy line gives the same output
either way. Results stream back to the driver, which appends them to the output file as
they arrive. ``ray`` is an optional extra: ``pip install inferline[ray]``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from inferline.core.errors import InvalidParameterError
from inferline.jobs.executor import AppExecutor
from inferline.jobs.objects import output_record
from inferline.jobs.offline import Line, append_record

AppFactory = Callable[[dict[str, Any]], Any]


class LineWorker:
    """A Ray Data actor: one replica of the app answering batches of lines."""

    def __init__(
        self, app_factory: AppFactory, options: dict[str, Any], url: str, suffix: str
    ) -> None:
        self.url, self.suffix = url, suffix
        self.app = app_factory(options)
        self.executor = AppExecutor(None)
        self.executor.bind(self.app)
        self.slots = int(options.get("max_in_flight", 64))
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="replica-loop", daemon=True).start()
        self.lifespan = self.app.router.lifespan_context(self.app)
        asyncio.run_coroutine_threadsafe(self.lifespan.__aenter__(), self.loop).result()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        """Lines in (``line``, ``custom_id``, ``body`` columns) -> output records (JSON)."""
        rows = list(zip(batch["line"], batch["custom_id"], batch["body"], strict=True))
        future = asyncio.run_coroutine_threadsafe(self._run(rows), self.loop)
        return {"record": future.result()}

    async def _run(self, rows: list[tuple[Any, Any, Any]]) -> list[str]:
        slots = asyncio.Semaphore(self.slots)

        async def one(line: Any, custom_id: Any, body: Any) -> str:
            async with slots:
                response = await self.executor(self.url, json.loads(str(body)))
            record = output_record(
                self.suffix, int(line), str(custom_id), response.status_code, response.body
            )
            return json.dumps(record)

        return list(await asyncio.gather(*(one(*row) for row in rows)))


def run_on_ray(
    lines: list[Line],
    url: str,
    suffix: str,
    output_path: Path,
    *,
    app_factory: AppFactory,
    options: dict[str, Any],
    address: str | None = None,
    replicas: int = 2,
    cpus_per_replica: float = 1.0,
    batch_size: int = 16,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (status, response body) per finished line while appending it to the output."""
    try:
        import ray
    except ImportError as error:
        raise InvalidParameterError(
            "--runner ray needs Ray: pip install 'inferline[ray]'", "runner"
        ) from error
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    items = [{"line": n, "custom_id": cid, "body": json.dumps(body)} for n, cid, body in lines]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, 4 * replicas))
    results = dataset.map_batches(
        LineWorker,
        fn_constructor_kwargs={
            "app_factory": app_factory,
            "options": options,
            "url": url,
            "suffix": suffix,
        },
        concurrency=replicas,
        batch_size=batch_size,
        num_cpus=cpus_per_replica,
    )
    with output_path.open("ab") as output:
        for batch in results.iter_batches(batch_size=None):
            for text in batch["record"]:
                record = json.loads(str(text))
                append_record(output, record)
                yield record["response"]["status_code"], record["response"]["body"]
