"""The HTTP API on real PostgreSQL: every endpoint, its bad input, its tokens, the live
events (over a real socket), the OpenAPI document and the metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn

import simplequeue as sq
from simplequeue.web import create_app
from tests.conftest import FAST, ROOT, count, eventually, query

ADMIN = "admin-token-0123456789"
READER = "read-token-0123456789ab"


@pytest.fixture
async def queue(dsn: str) -> AsyncIterator[sq.SimpleQueue]:
    async with sq.SimpleQueue.from_url(dsn, **FAST) as q:
        yield q


@pytest.fixture
async def client(queue: sq.SimpleQueue) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(queue, admin_tokens=[ADMIN], read_tokens=[READER])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://api", headers={"Authorization": f"Bearer {ADMIN}"}
    ) as c:
        yield c
    await app.state.events.aclose()


def as_reader() -> dict[str, str]:
    return {"Authorization": f"Bearer {READER}"}


async def test_insert_read_and_list_jobs(client: httpx.AsyncClient, dsn: str) -> None:
    r = await client.post(
        "/jobs", json={"queue": "mail", "data": {"to": "a@b.c"}, "unique_key": "k"}
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    again = await client.post("/jobs", json={"queue": "mail", "data": {}, "unique_key": "k"})
    assert again.status_code == 200 and again.json() == {"id": None, "deduplicated": True}
    job = (await client.get(f"/jobs/{job_id}", headers=as_reader())).json()
    assert job["data"] == {"to": "a@b.c"} and job["status"] == "pending" and job["errors"] == []
    listed = (await client.get("/jobs", params={"queue": "mail", "status": "pending"})).json()
    assert [j["id"] for j in listed["jobs"]] == [job_id] and listed["next_after"] is None
    page = (await client.get("/jobs", params={"limit": 1})).json()
    assert page["next_after"] == job_id
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    r = await client.post(
        "/jobs", json={"queue": "mail", "data": 1, "run_at": later, "priority": 5}
    )
    assert r.status_code == 201
    assert count(dsn) == 2


async def test_cancel_reschedule_retry(client: httpx.AsyncClient, dsn: str) -> None:
    job_id = (await client.post("/jobs", json={"queue": "q", "data": {}})).json()["id"]
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    r = await client.post(f"/jobs/{job_id}/reschedule", json={"run_at": later})
    assert r.status_code == 200, r.text
    assert (await client.post(f"/jobs/{job_id}/retry")).status_code == 200  # due now
    assert (await client.post(f"/jobs/{job_id}/cancel")).json()["cancelled"] is True
    r = await client.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 409 and "not pending or running" in r.json()["error"]
    r = await client.post(f"/jobs/{job_id}/reschedule", json={"run_at": later})
    assert r.status_code == 409
    assert (await client.post(f"/jobs/{job_id}/retry")).status_code == 200  # dead: runs again
    assert count(dsn, "status = 'pending' AND attempt = 0") == 1


async def test_the_dead_letter_queue(
    client: httpx.AsyncClient, queue: sq.SimpleQueue, dsn: str
) -> None:
    ids = [
        (await client.post("/jobs", json={"queue": "hooks", "data": i})).json()["id"]
        for i in range(4)
    ]
    for job_id in ids:
        await client.post(f"/jobs/{job_id}/cancel")
    await queue.run_janitor()
    dead = (await client.get("/dlq", params={"queue": "hooks", "status": "cancelled"})).json()
    assert sorted(j["id"] for j in dead["jobs"]) == sorted(ids)
    assert (await client.post(f"/dlq/{ids[0]}/requeue")).status_code == 200
    assert (await client.post(f"/dlq/{ids[1]}/purge")).status_code == 200
    assert (await client.post(f"/dlq/{ids[1]}/purge")).status_code == 409
    r = await client.post("/dlq/requeue", json={"queue": "hooks", "limit": 1})
    assert r.json() == {"requeued": 1}
    r = await client.post("/dlq/purge", json={"queue": "hooks", "status": ["cancelled"]})
    assert r.json() == {"purged": 1}
    assert count(dsn, table="dlq") == 0 and count(dsn, "status = 'pending'") == 2


async def test_queues_workers_and_stats(client: httpx.AsyncClient, queue: sq.SimpleQueue) -> None:
    class Ok(sq.Handler):
        QUEUE = "ok"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            return None

    queue.register_handler(Ok())
    await queue.start()
    name = "a/b c?d"  # a name that needs escaping in a path
    r = await client.post(
        f"/queues/{name.replace('?', '%3F')}/pause",
        json={"reason": "x", "until": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
    )
    assert r.status_code == 200 and r.json()["paused"] and r.json()["name"] == name
    queues = {q["name"]: q for q in (await client.get("/queues")).json()}
    assert queues[name]["paused"] and queues[name]["pause_reason"] == "x"
    r = await client.post(f"/queues/{name.replace('?', '%3F')}/resume")
    assert r.status_code == 200
    assert (await client.post(f"/queues/{name.replace('?', '%3F')}/resume")).status_code == 409

    async def registered() -> list[Any]:
        for _ in range(200):
            found = (await client.get("/workers")).json()
            if found:
                return list(found)
            await asyncio.sleep(0.02)
        return []

    [worker] = await registered()
    assert worker["id"] == str(queue.worker_id) and worker["queues"] == ["ok"]
    await client.post("/jobs", json={"queue": "ok", "data": {}})
    stats = (await client.get("/stats", params={"window": 60})).json()
    assert {s["queue"] for s in stats} >= {"ok", name}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("post", "/jobs", {"queue": "q"}, 400, "needs a queue and data"),
        ("post", "/jobs", {"queue": "", "data": 1}, 400, "queue"),
        ("post", "/jobs", {"queue": "q", "data": 1, "color": "red"}, 400, "unknown job field"),
        (
            "post",
            "/jobs",
            {"queue": "q", "data": 1, "run_at": "2030-01-01T00:00:00"},
            400,
            "time zone",
        ),
        ("post", "/jobs", {"queue": "q", "data": 1, "max_attempts": 0}, 400, "max_attempts"),
        ("post", "/jobs", [1, 2], 400, "JSON object"),
        ("get", "/jobs?status=sleeping", None, 400, "status"),
        ("get", "/jobs?limit=many", None, 400, "not an integer"),
        ("get", "/jobs?limit=0", None, 400, "limit"),
        ("get", "/jobs?since=yesterday", None, 400, "ISO 8601"),
        ("get", "/jobs/not-a-uuid", None, 400, "not a job id"),
        ("get", f"/jobs/{uuid.UUID(int=1)}", None, 404, "no job"),
        ("post", f"/jobs/{uuid.UUID(int=1)}/reschedule", {"when": "x"}, 400, "run_at"),
        ("post", f"/jobs/{uuid.UUID(int=1)}/cancel", None, 409, "not pending"),
        ("get", "/dlq?status=pending", None, 400, "status"),
        ("post", "/dlq/requeue", {"older_than": "old"}, 400, "seconds"),
        ("post", "/dlq/purge", {"everything": True}, 400, "unknown filter"),
        ("post", "/queues/q/pause", {"until": "soon"}, 400, "ISO 8601"),
        ("post", "/queues/q/pause", {"reason": "x" * 5000}, 400, "reason"),
        ("get", "/stats?window=0", None, 400, "window"),
        ("get", "/events?job=nope", None, 400, "not a job id"),
        ("post", "/dlq/requeue", {"older_than": 1e300}, 400, "older_than"),
        ("post", "/dlq/purge", {"older_than": -5}, 400, "older_than"),
        ("post", "/dlq/purge", {"older_than": 99999999999}, 400, "older_than"),
        ("get", "/jobs?limit=\u00b2", None, 400, "not an integer"),
        ("get", "/dlq?limit=\u0663", None, 400, "not an integer"),
        ("get", "/stats?window=1e308", None, 400, "window"),
        ("get", "/stats?window=inf", None, 400, "finite"),
        ("post", "/queues/%ff/pause", None, 400, "UTF-8"),
        ("post", "/queues/%ED%A0%80/resume", None, 400, "UTF-8"),
        ("get", "/nowhere", None, 404, "no such endpoint"),
        ("delete", "/jobs", None, 405, "method not allowed"),
    ],
)
async def test_bad_input_gets_a_clear_error_and_changes_nothing(
    client: httpx.AsyncClient,
    dsn: str,
    method: str,
    path: str,
    body: Any,
    status: int,
    message: str,
) -> None:
    r = (
        await client.request(method, path, json=body)
        if body is not None
        else await client.request(method, path)
    )
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert count(dsn) == 0 and count(dsn, table="queues") == 0


async def test_a_body_too_deep_or_too_large_is_refused(client: httpx.AsyncClient, dsn: str) -> None:
    deep = '{"queue": "a", "data": ' + "[" * 2000 + "]" * 2000 + "}"
    r = await client.post(
        "/jobs", content=deep.encode(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    big = b'{"queue": "a", "data": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    r = await client.post("/jobs", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "larger than" in r.json()["error"]
    assert count(dsn) == 0


async def test_numbers_json_should_not_hold_are_refused(
    client: httpx.AsyncClient, dsn: str
) -> None:
    for number in ("NaN", "Infinity", "-Infinity"):
        body = (f'{{"older_than": {number}}}').encode()
        r = await client.post(
            "/dlq/purge", content=body, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400 and "older_than" in r.json()["error"]


async def test_job_ids_come_back_in_their_canonical_form(client: httpx.AsyncClient) -> None:
    job_id = (await client.post("/jobs", json={"queue": "q", "data": 1})).json()["id"]
    r = await client.post(f"/jobs/urn:uuid:{job_id.upper()}/cancel")
    assert r.status_code == 200 and r.json()["id"] == job_id


async def test_a_body_that_is_not_json_is_refused(client: httpx.AsyncClient, dsn: str) -> None:
    r = await client.post(
        "/jobs",
        content=b"queue=q&data=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = await client.post("/jobs", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and count(dsn) == 0


async def test_tokens(queue: sq.SimpleQueue, dsn: str) -> None:
    app = create_app(queue, admin_tokens=[ADMIN], read_tokens=[READER])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as c:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-000000000"},
            {"Authorization": ADMIN},
        ):
            r = await c.get("/jobs", headers=headers)
            assert r.status_code == 401 and "bearer token" in r.json()["error"]
        r = await c.post("/jobs", json={"queue": "q", "data": 1}, headers=as_reader())
        assert r.status_code == 403 and "read only" in r.json()["error"]
        r = await c.post("/queues/q/pause", headers=as_reader())
        assert r.status_code == 403
        assert (await c.get("/jobs", headers=as_reader())).status_code == 200
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/openapi.json")).status_code == 200  # the document is public
    assert count(dsn) == 0 and count(dsn, table="queues") == 0
    with pytest.raises(ValueError, match="admin token"):
        create_app(queue, admin_tokens=[])
    with pytest.raises(ValueError, match="16 characters"):
        create_app(queue, admin_tokens=["short"])
    public = create_app(queue, admin_tokens=[ADMIN], public_read=True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=public), base_url="http://api"
    ) as c:
        assert (await c.get("/jobs")).status_code == 200
        assert (await c.post("/jobs", json={"queue": "q", "data": 1})).status_code == 401


async def test_the_openapi_document_lists_every_endpoint(
    client: httpx.AsyncClient, queue: sq.SimpleQueue
) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    app = create_app(queue, admin_tokens=[ADMIN])
    served = {
        (method, route.path.replace(":anything", ""))
        for route in app.routes
        if getattr(route, "methods", None) and route.path not in ("/", "/openapi.json")
        for method in route.methods
        if method != "HEAD"
    }
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented


async def test_metrics(client: httpx.AsyncClient) -> None:
    await client.post("/jobs", json={"queue": "m", "data": 1})
    await client.post("/queues/m/pause")
    text = (await client.get("/metrics", headers=as_reader())).text
    assert 'simplequeue_jobs{queue="m",state="due"} 1.0' in text
    assert 'simplequeue_queue_paused{queue="m"} 1.0' in text


# -- live events, over a real socket ------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):  # uvicorn offers no event to wait on
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def read_events(response: httpx.Response, n: int) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    kind = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            found.append((kind, json.loads(line[6:])))
            if len(found) == n:
                return found
    return found


async def test_events_stream_the_transitions_of_a_job(queue: sq.SimpleQueue, dsn: str) -> None:
    class Flaky(sq.Handler):
        QUEUE = "live"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            if job.attempt == 1:
                raise RuntimeError("once")

    queue.register_handler(Flaky())
    app = create_app(queue, admin_tokens=[ADMIN], read_tokens=[READER])
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
        other = asyncio.create_task(
            c.get("/events", params={"queue": "nothing-here", "token": READER}, timeout=3)
        )
        async with c.stream(
            "GET", "/events", params={"queue": "live", "token": READER}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            await queue.insert_job(sq.Job("elsewhere", {}))
            job_id = await queue.insert_job(sq.Job("live", {}))
            await queue.start()
            events = await asyncio.wait_for(read_events(response, 5), 10)
        assert [kind for kind, _ in events] == [
            "inserted",
            "started",
            "retried",
            "started",
            "completed",
        ]
        assert {e["id"] for _, e in events} == {str(job_id)} and {
            e["queue"] for _, e in events
        } == {"live"}
        with contextlib.suppress(httpx.ReadTimeout):
            await other
        r = await c.get("/events")
        assert r.status_code == 401
    await app.state.events.aclose()


async def test_a_slow_client_is_told_it_lagged(queue: sq.SimpleQueue) -> None:
    from simplequeue.web.events import BUFFERED, Subscription

    app = create_app(queue, admin_tokens=[ADMIN])
    hub = app.state.events
    subscription = Subscription()
    async with hub.subscribe(subscription):
        assert await hub.wait_connected(5)
        await queue.insert_jobs([sq.Job("q", {}) for _ in range(BUFFERED + 50)])
        for _ in range(500):
            if subscription.lagged:
                break
            await asyncio.sleep(0.01)
        assert subscription.events.qsize() == BUFFERED and subscription.lagged == 50
    assert hub.subscribers == 0
    await hub.aclose()


async def test_hostile_queue_names_in_events(queue: sq.SimpleQueue) -> None:
    from simplequeue.web.events import Subscription

    app = create_app(queue, admin_tokens=[ADMIN])
    hub = app.state.events
    long_name = "q" * 500
    wants_long, wants_odd = Subscription(queue=long_name), Subscription(queue='a"\nb')
    async with hub.subscribe(wants_long), hub.subscribe(wants_odd):
        assert await hub.wait_connected(5)
        await queue.insert_jobs([sq.Job(long_name, {}), sq.Job('a"\nb', {}), sq.Job("plain", {})])
        for _ in range(300):
            if wants_long.events.qsize() and wants_odd.events.qsize():
                break
            await asyncio.sleep(0.01)
    assert wants_long.events.qsize() == 1 and wants_long.events.get_nowait().queue is None
    assert wants_odd.events.qsize() == 1 and wants_odd.events.get_nowait().queue == 'a"\nb'
    await hub.aclose()


async def test_a_worker_serves_its_counters_and_histograms(dsn: str) -> None:
    """`simplequeue worker --metrics-port`: the process's counters, read at each scrape."""
    import sys

    port = free_port()
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simplequeue", "worker", "tests.worker_app:configure",
        "--dsn", dsn, "--no-migrate", "--metrics-port", str(port),
        "--heartbeat-interval", "0.2", "--empty-poll-sleep", "0.2",
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "SIMPLEQUEUE_TEST_DSN_APP": dsn},
    )  # fmt: skip
    try:
        async with sq.SimpleQueue.from_url(dsn) as queue:
            await queue.insert_jobs([sq.Job("work", {}) for _ in range(5)])
        async with httpx.AsyncClient() as http:
            text = ""
            for _ in range(200):
                try:
                    text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                except httpx.TransportError:
                    text = ""
                if "simplequeue_worker_results_written_total 5.0" in text:
                    break
                await asyncio.sleep(0.05)
        assert "simplequeue_worker_claimed_total 5.0" in text
        assert 'simplequeue_worker_processed_total{outcome="completed"} 5.0' in text
        assert 'simplequeue_worker_handler_seconds_bucket{le="+Inf"} 5.0' in text
        assert "simplequeue_worker_pickup_seconds_count 5.0" in text
        assert "simplequeue_worker_claim_batch_size_count" in text
        assert "simplequeue_worker_leader 1.0" in text  # the only worker: it leads
    finally:
        worker.terminate()
        await worker.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_any_queue_name_can_be_paused_over_http(client: httpx.AsyncClient, dsn: str) -> None:
    from urllib.parse import quote

    name = "line\nbreak/and?more"
    r = await client.post(f"/queues/{quote(name, safe='')}/pause")
    assert r.status_code == 200, r.text
    assert r.json()["name"] == name
    assert (await client.post(f"/queues/{quote(name, safe='')}/resume")).status_code == 200


async def test_a_subscription_ends_when_its_client_leaves(queue: sq.SimpleQueue) -> None:
    app = create_app(queue, admin_tokens=[ADMIN])
    hub = app.state.events
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
        async with c.stream("GET", "/events", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            assert r.status_code == 200
            for _ in range(200):
                if hub.subscribers == 1:
                    break
                await asyncio.sleep(0.01)
            assert hub.subscribers == 1
        for _ in range(200):  # well before the next ping (15 s)
            if hub.subscribers == 0:
                break
            await asyncio.sleep(0.01)
        assert hub.subscribers == 0
    await hub.aclose()


async def test_events_are_published_only_while_a_server_listens(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    """No server: inserts, claims and results send no event NOTIFY at all (nothing to pay);
    a server registers itself, and they do; once it is gone, they stop again."""
    import psycopg

    async def events_sent(insert: Any) -> int:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener:
            await listener.execute('LISTEN "simplequeue.ev"')
            await insert()
            got = 0
            async for _ in listener.notifies(timeout=0.5):
                got += 1
            return got

    assert await events_sent(lambda: queue.insert_job(sq.Job("q", {}))) == 0
    app = create_app(queue, admin_tokens=[ADMIN])
    hub = app.state.events
    assert await hub.wait_connected(5)
    assert count(dsn, table="event_listeners") == 1
    fresh = sq.SimpleQueue.from_url(dsn)  # a producer that has not asked yet
    async with fresh:
        assert await events_sent(lambda: fresh.insert_job(sq.Job("q", {}))) == 1
    await hub.aclose()
    assert count(dsn, table="event_listeners") == 0
    async with sq.SimpleQueue.from_url(dsn) as later:
        assert await events_sent(lambda: later.insert_job(sq.Job("q", {}))) == 0


async def test_queue_names_that_grow_when_escaped_still_publish(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    """Quotes, backslashes and control characters grow in JSON: 40 of them per NOTIFY must
    stay under PostgreSQL's payload limit, or inserts and claims would fail."""
    from simplequeue.web.events import Subscription

    app = create_app(queue, admin_tokens=[ADMIN])
    hub = app.state.events
    names = ["\x01" * 120, '"' * 120, "\\" * 120, "\x01" * 60 + "q"]
    subscriptions = [Subscription(queue=name) for name in names]
    async with contextlib.AsyncExitStack() as stack:
        for subscription in subscriptions:
            await stack.enter_async_context(hub.subscribe(subscription))
        assert await hub.wait_connected(5)
        for name in names:
            assert all(await queue.insert_jobs([sq.Job(name, {}) for _ in range(45)]))
        for _ in range(300):
            if all(s.events.qsize() == 45 for s in subscriptions):
                break
            await asyncio.sleep(0.01)
    assert [s.events.qsize() for s in subscriptions] == [45] * 4  # each its own, exactly
    await hub.aclose()


async def test_a_forged_notification_is_ignored_and_events_go_on(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    from simplequeue.web.events import Subscription

    app = create_app(queue, admin_tokens=[ADMIN])
    hub = app.state.events
    subscription = Subscription()
    async with hub.subscribe(subscription):
        assert await hub.wait_connected(5)
        for forged in (
            '["started", "not-a-uuid", "q"]',
            f'["x\\n\\nevent: completed", "{uuid.uuid4()}", "q"]',
            "[1]",
            "{}",
            "nope",
        ):
            query_one(dsn, "SELECT pg_notify('simplequeue.ev', %s)", [forged])
        job_id = await queue.insert_job(sq.Job("q", {}))
        for _ in range(300):
            if subscription.events.qsize():
                break
            await asyncio.sleep(0.01)
        event = subscription.events.get_nowait()
        assert (event.kind, event.job_id) == ("inserted", str(job_id))
        assert subscription.events.empty()
    await hub.aclose()


def query_one(dsn: str, statement: str, params: Any) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement, params)


async def test_limits_and_parks_over_http(client: httpx.AsyncClient, dsn: str) -> None:
    body = {
        "max_running": 4,
        "max_running_per_key": 1,
        "rate_limit": {"limit": 10, "per_seconds": 1},
        "rate_limit_per_key": None,
        "fair": True,
        "durability": "fast",
    }
    r = await client.put("/queues/lim%2Fx/limits", json=body)
    assert r.status_code == 200, r.text
    limits = r.json()["limits"]
    assert limits["max_running"] == 4 and limits["rate_limit"] == {"limit": 10, "per_seconds": 1.0}
    assert limits["fair"] is True
    assert r.json()["durability"] == "fast"
    [listed] = (await client.get("/queues")).json()
    assert listed["durability"] == "fast"
    r = await client.post("/jobs", json={"queue": "lim/x", "data": {}, "concurrency_key": "c1"})
    assert r.status_code == 201
    assert count(dsn, "concurrency_key = 'c1'") == 1
    until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    r = await client.post("/queues/lim%2Fx/park", json={"until": until, "key": "c1"})
    assert r.status_code == 200 and r.json()["key"] == "c1"
    assert count(dsn, table="parked_keys") == 1
    assert (await client.post("/queues/lim%2Fx/unpark", json={"key": "c1"})).status_code == 200
    r = await client.post("/queues/lim%2Fx/unpark", json={"key": "c1"})
    assert r.status_code == 409
    r = await client.put("/queues/lim%2Fx/limits", json={}, headers=as_reader())
    assert r.status_code == 403


@pytest.mark.parametrize(
    ("method", "path", "body", "needle"),
    [
        ("put", "/queues/q/limits", {"max_running": 0}, "max_running"),
        ("put", "/queues/q/limits", {"max_running": "3"}, "max_running"),
        ("put", "/queues/q/limits", {"rate_limit": 5}, "rate_limit"),
        ("put", "/queues/q/limits", {"rate_limit": {"limit": 5}}, "rate_limit"),
        ("put", "/queues/q/limits", {"rate_limit": {"limit": 5, "per_seconds": 0}}, "period"),
        ("put", "/queues/q/limits", {"rate_limit": {"limit": 5, "per_seconds": "1"}}, "number"),
        ("put", "/queues/q/limits", {"fair": 1}, "fair"),
        ("put", "/queues/q/limits", {"max": 1}, "unknown"),
        ("put", "/queues/q/limits", {"durability": "slow"}, "durability"),
        ("put", "/queues/q/limits", {"durability": None}, "durability"),
        ("put", "/queues/q/limits", {"durability": True}, "durability"),
        ("post", "/queues/q/park", {}, "until"),
        ("post", "/queues/q/park", {"until": "2031-01-01T00:00:00"}, "zone"),
        ("post", "/queues/q/park", {"until": "2031-01-01T00:00:00+00:00", "key": ""}, "key"),
        ("post", "/queues/q/unpark", {"key": 3}, "key"),
    ],
)
async def test_bad_limits_and_parks_are_refused_over_http(
    client: httpx.AsyncClient, dsn: str, method: str, path: str, body: Any, needle: str
) -> None:
    r = await client.request(method.upper(), path, json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]
    assert count(dsn, table="queues") == 0 and count(dsn, table="parked_keys") == 0


async def test_schedules_over_http(
    client: httpx.AsyncClient, queue: sq.SimpleQueue, dsn: str
) -> None:
    assert (await client.get("/schedules")).json() == []
    queue.schedule(
        "nightly/report", sq.Job("reports", {}), cron="0 2 * * *", timezone="Europe/Paris"
    )
    await queue.start()
    listed = await eventually(lambda: _schedules(client))
    [nightly] = listed
    assert nightly["name"] == "nightly/report" and nightly["queue"] == "reports"
    assert nightly["cron"] == "0 2 * * *" and nightly["every_seconds"] is None
    assert nightly["timezone"] == "Europe/Paris" and nightly["paused"] is False
    r = await client.post("/schedules/nightly%2Freport/pause", headers=as_reader())
    assert r.status_code == 403
    r = await client.post("/schedules/nightly%2Freport/pause")
    assert r.status_code == 200, r.text
    assert query(dsn, "SELECT paused FROM simplequeue.schedules") == [(True,)]
    assert (await client.post("/schedules/nightly%2Freport/resume")).status_code == 200
    assert query(dsn, "SELECT paused FROM simplequeue.schedules") == [(False,)]
    for path in ("/schedules/nope/pause", "/schedules/nope/resume"):
        r = await client.post(path)
        assert r.status_code == 404 and "no schedule named nope" in r.json()["error"]
    assert (await client.delete("/schedules/nope")).status_code == 404
    assert (await client.post("/schedules/%FF/pause")).status_code == 400
    await queue.stop()
    assert (await client.delete("/schedules/nightly%2Freport")).status_code == 200
    assert (await client.get("/schedules")).json() == []


async def _schedules(client: httpx.AsyncClient) -> list[dict[str, Any]] | None:
    found: list[dict[str, Any]] = (await client.get("/schedules")).json()
    return found or None
