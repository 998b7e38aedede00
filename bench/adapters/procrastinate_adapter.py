"""procrastinate (pinned in bench/requirements.txt) through its documented public API.

App + PsycopgConnector, one async task, `defer_async` / `batch_defer_async`, and
`App.run_worker_async(concurrency=...)` stopped by cancelling its task (the documented
graceful shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import procrastinate
import psycopg

from .base import Adapter, Hooks, Payload, Producer, scalar

QUEUE = "bench"
#: Connections per worker process (the listener included), the same budget as the others.
WORKER_POOL = 10


def _make_app(
    dsn: str, min_size: int, max_size: int, hooks: Hooks | None = None
) -> tuple[Any, Any]:
    """An App with its own pool and the no-op task registered on the bench queue."""
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=dsn, min_size=min_size, max_size=max_size)
    )

    @app.task(name="noop", queue=QUEUE)
    async def noop(**kwargs: Any) -> None:
        if hooks is not None:
            hooks.start(kwargs)
            hooks.done()

    return app, noop


class ProcrastinateProducer(Producer):
    """defer_async for one job, batch_defer_async for many."""

    def __init__(self, app: Any, task: Any) -> None:
        self.app = app
        self.task = task

    async def enqueue_one(self, payload: Payload) -> None:
        await self.task.defer_async(**payload)

    async def enqueue_bulk(self, payloads: Sequence[Payload]) -> None:
        await self.task.batch_defer_async(*payloads)

    async def aclose(self) -> None:
        await self.app.close_async()


class ProcrastinateAdapter(Adapter):
    """procrastinate with its psycopg 3 connector."""

    name = "procrastinate"

    async def setup(self, dsn: str) -> None:
        app, _ = _make_app(dsn, 1, 1)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    async def open_producer(self, dsn: str, connections: int) -> Producer:
        app, task = _make_app(dsn, connections, connections)
        await app.open_async()
        return ProcrastinateProducer(app, task)

    async def run_worker(
        self,
        dsn: str,
        concurrency: int,
        hooks: Hooks,
        stop: asyncio.Event,
        ready: Callable[[], None],
    ) -> None:
        app, _ = _make_app(dsn, 2, WORKER_POOL, hooks)
        async with app.open_async():
            worker = asyncio.create_task(
                app.run_worker_async(
                    queues=[QUEUE],
                    concurrency=concurrency,
                    wait=True,
                    listen_notify=True,
                    install_signal_handlers=False,
                    delete_jobs="never",
                )
            )
            ready()
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({worker, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if worker.done():
                worker.result()  # a worker that died on its own: surface why
                return
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    async def count_done(self, conn: psycopg.AsyncConnection) -> int:
        return int(
            await scalar(conn, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'")
        )

    async def count_queued(self, conn: psycopg.AsyncConnection) -> int:
        return int(
            await scalar(
                conn, "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
            )
        )

    async def last_done_epoch(self, conn: psycopg.AsyncConnection) -> float | None:
        value = await scalar(
            conn,
            "SELECT extract(epoch FROM max(at))::float8 FROM procrastinate_events"
            " WHERE type = 'succeeded'",
        )
        return None if value is None else float(value)
