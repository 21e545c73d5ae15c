"""`inferline batch run ... --runner ray`: the same batch file on a Ray cluster (Ray Data).

The driver validates the input and skips the ``custom_id``s already in the output (the same
resume rule as the local run); the rest become a Ray Dataset, split into blocks, mapped by
engine replicas running as actors (`map_batches` with ``concurrency=replicas``). Each
replica runs the server's app in process, exactly as the local runner does, so a greedy
line gives the same output either way. Results stream back to the driver, which appends
them to the output file as they arrive. ``ray`` is an optional extra:
``pip install inferline[ray]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

from inferline.cli.batch import _build_app, run_suffix
from inferline.core.errors import InvalidParameterError

ENGINE_OPTIONS = (
    "model",
    "device",
    "kv_cache_gib",
    "max_model_len",
    "weight_format",
    "kv_cache_dtype",
    "kernels",
    "max_in_flight",
)


class LineWorker:
    """A Ray Data actor: one engine replica answering batches of lines."""

    def __init__(self, options: dict[str, Any], url: str, suffix: str) -> None:
        from inferline.jobs import AppExecutor

        self.suffix = suffix
        args = argparse.Namespace(**options, config=None, trust_pickle=False)
        self.url = url
        self.app = _build_app(args)
        self.executor = AppExecutor(None)
        self.executor.bind(self.app)
        self.slots = options["max_in_flight"]
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
            from inferline.jobs import output_record

            async with slots:
                response = await self.executor(self.url, json.loads(str(body)))
            record = output_record(
                self.suffix, int(line), str(custom_id), response.status_code, response.body
            )
            return json.dumps(record)

        return list(await asyncio.gather(*(one(*row) for row in rows)))


def run_on_ray(
    args: argparse.Namespace, todo: list[tuple[int, str, dict[str, Any]]], url: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (status, response body) per finished line while appending it to the output."""
    try:
        import ray
    except ImportError as error:
        raise InvalidParameterError(
            "--runner ray needs Ray: pip install 'inferline[ray]'", "runner"
        ) from error
    if not ray.is_initialized():
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
    options = {key: getattr(args, key) for key in ENGINE_OPTIONS}
    items = [{"line": n, "custom_id": cid, "body": json.dumps(body)} for n, cid, body in todo]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, 4 * args.replicas))
    results = dataset.map_batches(
        LineWorker,
        fn_constructor_kwargs={"options": options, "url": url, "suffix": run_suffix(args.input)},
        concurrency=args.replicas,
        batch_size=args.ray_batch_size,
        num_cpus=args.cpus_per_replica,
    )
    with args.output.open("ab") as output:
        for batch in results.iter_batches(batch_size=None):
            for text in batch["record"]:
                record = json.loads(str(text))
                output.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
                output.flush()
                os.fsync(output.fileno())
                yield record["response"]["status_code"], record["response"]["body"]
