"""The HTTP API's endpoints: each reads its input, calls the queue (the same calls as
the Python API and the command, with the same checks), and answers JSON.

Errors answer `{"error": "..."}`: 400 for bad input, 401 without a valid token, 403 for a
read token on a change, 404 for an unknown job or schedule, 409 when nothing could change (a job
that is not pending, a queue that is not paused).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Send
from starlette.types import Scope as AsgiScope

from simplequeue.durability import Durability
from simplequeue.errors import InvalidArgumentError, InvalidJobError, JobNotFoundError
from simplequeue.job import FOREVER, Job
from simplequeue.limits import Rate
from simplequeue.operations import MAX_BULK, as_uuid
from simplequeue.queue import SimpleQueue
from simplequeue.web.auth import Access, Scope
from simplequeue.web.events import EventHub, Subscription

__all__ = ["Api", "BadRequest"]

Handler = Callable[[Request], Awaitable[Response]]

MAX_PER_WRITE = 500
"""Events one write to a client carries at most."""

MAX_BODY = 4 * 1024 * 1024
"""Bytes a request body may have: a job's data is at most max_payload_bytes (1 MB by
default), encoded."""

MAX_AGE = 100 * 365.25 * 86400
"""The oldest `older_than` (seconds): a century."""

PING_EVERY = 15.0
"""Seconds between SSE comments that keep idle connections (and proxies) open."""

JOB_FIELDS = {
    "queue",
    "data",
    "unique_key",
    "fingerprint",
    "run_at",
    "max_attempts",
    "priority",
    "timeout",
    "concurrency_key",
    "unique_for",
}


class BadRequest(Exception):
    """Input the API refuses before calling the queue."""


class Conflict(Exception):
    """Nothing could change."""


class NotFound(Exception):
    """What the path names does not exist (a schedule)."""


class Api:
    """The endpoints of one queue, behind `access`."""

    def __init__(self, queue: SimpleQueue, access: Access, hub: EventHub) -> None:
        self.queue = queue
        self.access = access
        self.hub = hub

    def guarded(self, scope: Scope, handler: Handler, *, query_token: bool = False) -> Handler:
        """The handler behind a token check, its errors answered as JSON."""

        async def endpoint(request: Request) -> Response:
            granted = self.access.scope_of(request, query_token=query_token)
            if granted is None:
                return _error(401, "a valid bearer token is required (Authorization: Bearer ...)")
            if scope is Scope.ADMIN and granted is not Scope.ADMIN:
                if not self.access.presented(request):  # public reads, no token
                    return _error(401, "changes need an admin bearer token")
                return _error(403, "this token may read only; changes need an admin token")
            try:
                return await handler(request)
            except (BadRequest, InvalidArgumentError, InvalidJobError) as exc:
                return _error(400, str(exc))
            except (JobNotFoundError, NotFound) as exc:
                return _error(404, str(exc))
            except Conflict as exc:
                return _error(409, str(exc))

        return endpoint

    # -- jobs ------------------------------------------------------------------------

    async def insert_job(self, request: Request) -> Response:
        body = await _body(request)
        unknown = set(body) - JOB_FIELDS
        if unknown:
            raise BadRequest(f"unknown job field(s): {', '.join(sorted(unknown))}")
        if "queue" not in body or "data" not in body:
            raise BadRequest("a job needs a queue and data")
        options = {k: v for k, v in body.items() if k not in ("queue", "data")}
        if options.get("run_at") is not None:
            options["run_at"] = _time("run_at", options["run_at"])
        if options.get("unique_for") == "forever":  # JSON has no FOREVER: the word says it
            options["unique_for"] = FOREVER
        job = Job(body["queue"], body["data"], **options)
        job_id = await self.queue.insert_job(job)
        if job_id is None:
            return JSONResponse({"id": None, "deduplicated": True}, status_code=200)
        return JSONResponse({"id": str(job_id), "deduplicated": False}, status_code=201)

    async def list_jobs(self, request: Request) -> Response:
        params = request.query_params
        since = params.get("since")
        limit = _int(params.get("limit"), 50)
        found = await self.queue.list_jobs(
            params.get("queue"),
            params.getlist("status") or None,
            limit,
            after=params.get("after"),
            unique_key=params.get("unique_key"),
            fingerprint=params.get("fingerprint"),
            since=None if since is None else _time("since", since),
            worker=params.get("worker"),
        )
        following = str(found[-1].id) if len(found) == limit else None
        return JSONResponse({"jobs": [j.to_dict() for j in found], "next_after": following})

    async def get_job(self, request: Request) -> Response:
        job_id = _job_id(request)
        job = await self.queue.get_job(job_id)
        if job is None:
            raise JobNotFoundError(f"no job with id {job_id}")
        return JSONResponse(job.to_dict())

    async def cancel_job(self, request: Request) -> Response:
        job_id = _job_id(request)
        if not await self.queue.cancel_job(job_id):
            raise Conflict(f"job {job_id} is not pending or running")
        return JSONResponse({"id": job_id, "cancelled": True})

    async def reschedule_job(self, request: Request) -> Response:
        job_id = _job_id(request)
        body = await _body(request)
        if set(body) != {"run_at"}:
            raise BadRequest('the body must be {"run_at": "<ISO 8601 time with a zone>"}')
        run_at = _time("run_at", body["run_at"])
        if not await self.queue.reschedule_job(job_id, run_at):
            raise Conflict(f"job {job_id} is not pending")
        return JSONResponse({"id": job_id, "run_at": run_at.isoformat()})

    async def retry_job(self, request: Request) -> Response:
        job_id = _job_id(request)
        if not await self.queue.retry_job(job_id):
            raise Conflict(
                f"job {job_id} is neither pending nor dead (or a live job holds its unique key)"
            )
        return JSONResponse({"id": job_id, "retried": True})

    async def release_unique_key(self, request: Request) -> Response:
        body = await _body(request)
        if set(body) != {"key"}:
            raise BadRequest('the body must be {"key": "<the unique key>"}')
        key = body["key"]
        if not await self.queue.release_unique_key(key):
            raise Conflict(f"unique key {key!r:.200} is not held over time")
        return JSONResponse({"key": key, "released": True})

    # -- the dead-letter queue -------------------------------------------------------

    async def list_dlq(self, request: Request) -> Response:
        params = request.query_params
        found = await self.queue.list_dlq(
            params.get("queue"),
            _int(params.get("limit"), 50),
            status=params.getlist("status") or None,
        )
        return JSONResponse({"jobs": [j.to_dict() for j in found]})

    async def _dead_filters(self, request: Request) -> dict[str, Any]:
        body = await _body(request)
        unknown = set(body) - {"queue", "status", "older_than", "limit"}
        if unknown:
            raise BadRequest(f"unknown filter(s): {', '.join(sorted(unknown))}")
        older_than = body.get("older_than")
        before = None
        if older_than is not None:
            if (
                isinstance(older_than, bool)
                or not isinstance(older_than, int | float)
                or not 0 <= older_than <= MAX_AGE
            ):
                raise BadRequest(f"older_than must be a number of seconds from 0 to {MAX_AGE:g}")
            before = datetime.now(UTC) - timedelta(seconds=older_than)
        return {
            "queue": body.get("queue"),
            "status": body.get("status"),
            "before": before,
            "limit": _int(body.get("limit"), MAX_BULK),
        }

    async def requeue_dlq(self, request: Request) -> Response:
        filters = await self._dead_filters(request)
        return JSONResponse({"requeued": await self.queue.requeue_dlq(**filters)})

    async def purge_dlq(self, request: Request) -> Response:
        filters = await self._dead_filters(request)
        return JSONResponse({"purged": await self.queue.purge_dlq(**filters)})

    async def requeue_dead_job(self, request: Request) -> Response:
        job_id = _job_id(request)
        if not await self.queue.requeue_dlq_job(job_id):
            raise Conflict(f"no dead job {job_id} to requeue (or a live job holds its unique key)")
        return JSONResponse({"id": job_id, "requeued": True})

    async def purge_dead_job(self, request: Request) -> Response:
        job_id = _job_id(request)
        if not await self.queue.purge_dlq_job(job_id):
            raise Conflict(f"no dead job {job_id}")
        return JSONResponse({"id": job_id, "purged": True})

    # -- queues, workers, stats ------------------------------------------------------

    async def list_queues(self, request: Request) -> Response:
        return JSONResponse([q.to_dict() for q in await self.queue.list_queues()])

    async def pause_queue(self, request: Request) -> Response:
        body = await _body(request)
        unknown = set(body) - {"until", "reason", "by"}
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        until = body.get("until")
        info = await self.queue.pause_queue(
            _queue_name(request),
            until=None if until is None else _time("until", until),
            by=body.get("by"),
            reason=body.get("reason"),
        )
        return JSONResponse(info.to_dict())

    async def resume_queue(self, request: Request) -> Response:
        name = _queue_name(request)
        if not await self.queue.resume_queue(name):
            raise Conflict(f"queue {name} is not paused")
        return JSONResponse({"name": name, "resumed": True})

    async def configure_queue(self, request: Request) -> Response:
        body = await _body(request)
        fields = {
            "max_running",
            "max_running_per_key",
            "rate_limit",
            "rate_limit_per_key",
            "fair",
            "durability",
        }
        unknown = set(body) - fields
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        info = await self.queue.configure_queue(
            _queue_name(request),
            max_running=body.get("max_running"),
            max_running_per_key=body.get("max_running_per_key"),
            rate_limit=_rate("rate_limit", body.get("rate_limit")),
            rate_limit_per_key=_rate("rate_limit_per_key", body.get("rate_limit_per_key")),
            fair=body.get("fair", False),
            durability=body.get("durability", Durability.DURABLE.value),
        )
        return JSONResponse(info.to_dict())

    async def park(self, request: Request) -> Response:
        body = await _body(request)
        unknown = set(body) - {"until", "key"}
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        name, key = _queue_name(request), body.get("key")
        until = _time("until", body.get("until"))
        await self.queue.park(name, until, key=key)
        return JSONResponse({"name": name, "key": key, "parked_until": until.isoformat()})

    async def unpark(self, request: Request) -> Response:
        body = await _body(request)
        unknown = set(body) - {"key"}
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        name, key = _queue_name(request), body.get("key")
        if not await self.queue.unpark(name, key=key):
            raise Conflict(f"queue {name}{'' if key is None else ' key ' + str(key)} is not parked")
        return JSONResponse({"name": name, "key": key, "unparked": True})

    async def list_schedules(self, request: Request) -> Response:
        return JSONResponse([s.to_dict() for s in await self.queue.list_schedules()])

    async def pause_schedule(self, request: Request) -> Response:
        name = _schedule_name(request)
        if not await self.queue.pause_schedule(name):
            raise NotFound(f"no schedule named {name}")
        return JSONResponse({"name": name, "paused": True})

    async def resume_schedule(self, request: Request) -> Response:
        name = _schedule_name(request)
        if not await self.queue.resume_schedule(name):
            raise NotFound(f"no schedule named {name}")
        return JSONResponse({"name": name, "paused": False})

    async def delete_schedule(self, request: Request) -> Response:
        name = _schedule_name(request)
        if not await self.queue.delete_schedule(name):
            raise NotFound(f"no schedule named {name}")
        return JSONResponse({"name": name, "deleted": True})

    async def list_workers(self, request: Request) -> Response:
        return JSONResponse([w.to_dict() for w in await self.queue.list_workers()])

    async def stats(self, request: Request) -> Response:
        window = _float(request.query_params.get("window"), 300.0)
        summaries = await self.queue.queue_summaries(window)
        return JSONResponse(
            [{**vars(s), "completed_per_minute": s.completed_per_minute} for s in summaries]
        )

    # -- live events -----------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        job = request.query_params.get("job")
        if job is not None:
            try:
                job = str(uuid.UUID(job))
            except ValueError:
                raise BadRequest(f"not a job id: {job!r}") from None
        subscription = Subscription(queue=request.query_params.get("queue"), job=job)
        await self.hub.wait_connected(timeout=5.0)
        return EventStream(
            self._stream(request, subscription),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _stream(self, request: Request, subscription: Subscription) -> AsyncIterator[str]:
        """Every event waiting goes out in one write: a busy queue costs a write per batch
        of transitions, not per transition, for each client."""
        events = subscription.events
        async with self.hub.subscribe(subscription):
            yield ": connected\n\n"
            while True:  # until the client goes: the response cancels this generator
                try:
                    # Not wait_for: on Python 3.11 it swallows a cancellation that meets an
                    # event already there, and the stream of a client long gone runs on.
                    async with asyncio.timeout(PING_EVERY):
                        first = await events.get()
                except TimeoutError:
                    yield ": ping\n\n"
                    continue
                chunk = [first.sse]
                while not events.empty() and len(chunk) < MAX_PER_WRITE:
                    chunk.append(events.get_nowait().sse)
                if subscription.lagged or subscription.gap:
                    # dropped: how many (null: unknown, the server's connection came back)
                    dropped = json.dumps(
                        {"dropped": None if subscription.gap else subscription.lagged}
                    )
                    chunk.insert(0, f"event: lagged\ndata: {dropped}\n\n")
                    subscription.lagged, subscription.gap = 0, False
                yield "".join(chunk)


class EventStream(StreamingResponse):
    """A stream that ends as soon as its client goes. Starlette leaves that to the next
    write under ASGI 2.4 servers, which for an idle event stream is the next ping: a
    subscription, and a server's graceful stop, would wait on a client long gone."""

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        streaming = asyncio.ensure_future(self.stream_response(send))
        leaving = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait([streaming, leaving], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streaming, leaving):
                task.cancel()
            await asyncio.wait([streaming, leaving], timeout=5.0)
        if not streaming.done() or streaming.cancelled():
            return
        if streaming.exception() is not None:
            exc = streaming.exception()
            if not isinstance(exc, OSError):  # a write to a client already gone
                raise exc  # type: ignore[misc]


def _job_id(request: Request) -> str:
    """The job id of the path, in its one canonical form (400 for what is not a UUID)."""
    return str(as_uuid(request.path_params["job_id"]))


_QUEUE_IN_PATH = re.compile(rb"/queues/(.+)/(?:pause|resume|limits|park|unpark)$", re.S)
_SCHEDULE_IN_PATH = re.compile(rb"/schedules/(.+?)(?:/pause|/resume)?$", re.S)


def _queue_name(request: Request) -> str:
    """The queue name of the path, decoded strictly: percent-escapes that are not UTF-8
    (which the router turns into U+FFFD) name no queue, rather than another one."""
    return _name_in_path(request, _QUEUE_IN_PATH, "queue")


def _schedule_name(request: Request) -> str:
    """The schedule name of the path, decoded as strictly as a queue's."""
    return _name_in_path(request, _SCHEDULE_IN_PATH, "schedule")


def _name_in_path(request: Request, pattern: re.Pattern[bytes], what: str) -> str:
    raw = request.scope.get("raw_path")
    found = pattern.search(raw) if isinstance(raw, bytes) else None
    if found is not None:
        try:
            unquote_to_bytes(found[1]).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"the {what} name in the path is not valid UTF-8") from None
    return str(request.path_params["name"])


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _body(request: Request) -> dict[str, Any]:
    """A JSON object body (an empty body is an empty object)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY:
        raise BadRequest(f"the body is larger than {MAX_BODY} bytes")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise BadRequest(f"the body is larger than {MAX_BODY} bytes")
    if not raw:
        return {}
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise BadRequest("the body must be JSON (Content-Type: application/json)")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _time(name: str, value: object) -> datetime:
    """An ISO 8601 time with its zone."""
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be an ISO 8601 time string, got {value!r}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} is not an ISO 8601 time: {value!r}") from None
    if moment.tzinfo is None:
        raise BadRequest(f"{name} needs a time zone (2026-12-01T18:00:00+00:00), got {value!r}")
    return moment


def _rate(name: str, value: object) -> Rate | None:
    """A rate as JSON: {"limit": n, "per_seconds": s}, or null."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"limit", "per_seconds"}:
        raise BadRequest(f'{name} must be {{"limit": n, "per_seconds": s}} or null')
    per = value["per_seconds"]
    if isinstance(per, bool) or not isinstance(per, int | float):
        raise BadRequest(f"{name}.per_seconds must be a number, got {per!r:.40}")
    return Rate(value["limit"], per=per)


def _int(value: object, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.strip().lstrip("-").isdigit():
        return int(value)
    raise BadRequest(f"not an integer: {value!r:.40}")


def _float(value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise BadRequest(f"not a number: {value!r:.40}") from None
    if not math.isfinite(number):
        raise BadRequest(f"not a finite number: {value!r:.40}")
    return number
