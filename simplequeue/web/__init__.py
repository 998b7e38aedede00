"""The HTTP API, its live events and the dashboard, as one ASGI app (Starlette).

    app = create_app(queue, admin_tokens=[ADMIN], read_tokens=[READER])

Mount it in a Starlette or FastAPI app (`app.mount("/jobs-admin", ...)`), or run it with
`simplequeue serve`. Needs the `web` extra. docs/http.md lists the endpoints.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from simplequeue.metrics import queue_metrics
from simplequeue.queue import SimpleQueue
from simplequeue.store import Store
from simplequeue.web.api import Api
from simplequeue.web.auth import Access, Scope, new_token
from simplequeue.web.events import EventHub
from simplequeue.web.openapi import document

__all__ = ["Access", "create_app", "new_token"]


class _Anything(Convertor[str]):
    """A path segment that may hold any character, "/" and newlines included: a queue
    name is any text (Starlette's `path` stops at a newline)."""

    regex = "[\\s\\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anything", _Anything())


def create_app(
    queue: SimpleQueue,
    *,
    admin_tokens: Iterable[str],
    read_tokens: Iterable[str] = (),
    public_read: bool = False,
    open_queue: bool = False,
) -> Starlette:
    """The API of `queue` (opened by you, or by the app's lifespan with `open_queue`).

    Every request needs a bearer token: a read token for reads, an admin token for
    changes (`public_read`: reads need none). Tokens are at least 16 characters.
    """
    access = Access.of(admin_tokens, read_tokens, public_read=public_read)
    hub = EventHub(queue.pool, Store(queue.schema), queue.config.listen_dsn)
    api = Api(queue, access, hub)
    read, admin = Scope.READ, Scope.ADMIN

    def route(path: str, scope: Scope, handler: Any, method: str = "GET") -> Route:
        return Route(path, api.guarded(scope, handler), methods=[method])

    async def metrics(request: Request) -> Response:
        body = queue_metrics(await queue.queue_summaries(), await queue.list_workers())
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def openapi(request: Request) -> Response:
        return JSONResponse(document())

    async def dashboard(request: Request) -> Response:
        page = resources.files("simplequeue.web").joinpath("static/index.html")
        return HTMLResponse(page.read_text(encoding="utf-8"), headers=SECURITY_HEADERS)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if open_queue:
            async with queue:
                yield
        else:
            yield
        await hub.aclose()

    routes = [
        route("/jobs", admin, api.insert_job, "POST"),
        route("/jobs", read, api.list_jobs),
        route("/jobs/{job_id}", read, api.get_job),
        route("/jobs/{job_id}/cancel", admin, api.cancel_job, "POST"),
        route("/jobs/{job_id}/reschedule", admin, api.reschedule_job, "POST"),
        route("/jobs/{job_id}/retry", admin, api.retry_job, "POST"),
        route("/unique-keys/release", admin, api.release_unique_key, "POST"),
        route("/dlq", read, api.list_dlq),
        route("/dlq/requeue", admin, api.requeue_dlq, "POST"),
        route("/dlq/purge", admin, api.purge_dlq, "POST"),
        route("/dlq/{job_id}/requeue", admin, api.requeue_dead_job, "POST"),
        route("/dlq/{job_id}/purge", admin, api.purge_dead_job, "POST"),
        route("/queues", read, api.list_queues),
        route("/queues/{name:anything}/pause", admin, api.pause_queue, "POST"),
        route("/queues/{name:anything}/resume", admin, api.resume_queue, "POST"),
        route("/queues/{name:anything}/limits", admin, api.configure_queue, "PUT"),
        route("/queues/{name:anything}/park", admin, api.park, "POST"),
        route("/queues/{name:anything}/unpark", admin, api.unpark, "POST"),
        route("/schedules", read, api.list_schedules),
        route("/schedules/{name:anything}/pause", admin, api.pause_schedule, "POST"),
        route("/schedules/{name:anything}/resume", admin, api.resume_schedule, "POST"),
        route("/schedules/{name:anything}", admin, api.delete_schedule, "DELETE"),
        route("/workers", read, api.list_workers),
        route("/stats", read, api.stats),
        Route("/events", api.guarded(read, api.events, query_token=True), methods=["GET"]),
        route("/metrics", read, metrics),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/", dashboard, methods=["GET"]),
        Mount("/static", StaticFiles(packages=[("simplequeue.web", "static")]), name="static"),
    ]

    async def not_here(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        what = "no such endpoint" if status == 404 else "method not allowed here"
        return JSONResponse({"error": f"{what}: {request.method} {request.url.path}"}, status)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_here, 405: not_here},
    )
    app.state.events = hub
    return app


SECURITY_HEADERS = {
    # Everything the page loads is its own (the wheel ships it: no CDN); no inline script.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
