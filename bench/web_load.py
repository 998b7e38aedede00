"""The HTTP API under load: does serving live events slow the workers?

A worker process drains a backlog at about 1,000 transitions a second (each job is
started and completed; the handler sleeps 50 ms, 30 at a time), first alone, then while
`simplequeue serve` streams every event to 200 Server-Sent Events clients and answers API
reads. The drain's wall time is compared, and the clients' counts checked.

    .venv/bin/python bench/web_load.py [--dsn DSN] [--jobs 10000] [--clients 200]

Needs the `web` extra (the test environment has it). Prints a table; exits non-zero when
the workers slowed by more than 5% or a client missed events.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TOKEN = "load-admin-token-0123456789"
HANDLER_SLEEP = 0.05
CONCURRENCY = 30


def handlers(queue: Any) -> None:
    """The worker's handler: 50 ms of waiting, like a call to another service."""
    import simplequeue as sq

    class Paced(sq.Handler):
        QUEUE = "load"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            await asyncio.sleep(HANDLER_SLEEP)

    queue.register_handler(Paced())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fresh_database(base: str) -> str:
    name = f"sq_web_load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg.conninfo.make_conninfo(base, dbname=name)
    subprocess.run(
        [PYTHON, "-m", "simplequeue", "migrate", "--dsn", dsn], check=True, capture_output=True
    )
    return dsn


def drop_database(base: str, dsn: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def preload(dsn: str, n: int) -> None:
    import simplequeue as sq

    with sq.SyncQueue.from_url(dsn) as queue:
        queue.declare_queues(["load"])
        for start in range(0, n, 5000):
            queue.insert_jobs(
                [sq.Job("load", {"i": i}) for i in range(start, min(n, start + 5000))]
            )


def drain(dsn: str, n: int) -> float:
    """Seconds from the worker's first start to the last completion, from the table."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'bench'}"}
    worker = subprocess.Popen(
        [PYTHON, "-m", "simplequeue", "--log-level", "warning", "worker", "web_load:handlers",
         "--dsn", dsn, "--no-migrate", "--global-permits", str(CONCURRENCY),
         "--queue-permits", str(CONCURRENCY)],
        env=env, cwd=ROOT / "bench",
    )  # fmt: skip
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while True:
                (done,) = conn.execute(  # type: ignore[misc]
                    "SELECT count(*) FROM simplequeue.jobs WHERE status = 'completed'"
                ).fetchone()
                if done >= n:
                    break
                time.sleep(0.25)
            (seconds,) = conn.execute(  # type: ignore[misc]
                "SELECT extract(epoch FROM max(completed_at) - min(completed_at))"
                " FROM simplequeue.jobs WHERE status = 'completed'"
            ).fetchone()
    finally:
        worker.terminate()
        worker.wait(30)
    return float(seconds)


async def clients(port: int, count: int, stop: asyncio.Event) -> list[int]:
    """`count` SSE clients, each counting the events it receives until `stop`. Plain
    sockets that count `data:` lines: the harness must not be what takes the CPU."""
    received = [0] * count
    ready = asyncio.Semaphore(0)
    request = (
        f"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()

    async def one(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        ready.release()
        tail = b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                data = tail + data
                received[i] += data.count(b"\ndata: ")
                tail = data[-7:]  # a marker cut in two is counted in the next read
                received[i] -= tail.count(b"\ndata: ")
        finally:
            writer.close()

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    for _ in range(count):
        await ready.acquire()
    await stop.wait()
    await asyncio.sleep(2.0)  # the last events reach the slowest client
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return received


async def with_sse_load(dsn: str, n: int, count: int) -> tuple[float, list[int], list[float]]:
    port = free_port()
    server = subprocess.Popen(  # noqa: ASYNC220 - started once, before any client
        [PYTHON, "-m", "simplequeue", "--log-level", "warning", "serve", "--dsn", dsn,
         "--port", str(port), "--admin-token", TOKEN],
        cwd=ROOT, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as http:
            for _ in range(200):
                try:
                    await http.get("/openapi.json")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        stop = asyncio.Event()
        listening = asyncio.create_task(clients(port, count, stop))
        await asyncio.sleep(1.0)  # every client connected
        reads: list[float] = []

        async def reader() -> None:  # an operator's dashboard polling the API meanwhile
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=url, headers=headers) as http:
                while not stop.is_set():
                    began = time.perf_counter()
                    (await http.get("/stats")).raise_for_status()
                    reads.append(time.perf_counter() - began)
                    await asyncio.sleep(1.0)

        polling = asyncio.create_task(reader())
        seconds = await asyncio.to_thread(drain, dsn, n)
        stop.set()
        received = await listening
        await polling
    finally:
        server.terminate()
        server.wait(30)
    return seconds, received, reads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--dsn",
        default=os.environ.get(
            "SIMPLEQUEUE_BENCH_DSN", "host=127.0.0.1 user=postgres dbname=postgres"
        ),
    )
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    alone: list[float] = []
    loaded: list[float] = []
    misses = 0
    stats_p50: list[float] = []
    for _ in range(args.rounds):
        dsn = fresh_database(args.dsn)
        try:
            preload(dsn, args.jobs)
            alone.append(drain(dsn, args.jobs))
        finally:
            drop_database(args.dsn, dsn)
        dsn = fresh_database(args.dsn)
        try:
            preload(dsn, args.jobs)
            seconds, received, reads = asyncio.run(with_sse_load(dsn, args.jobs, args.clients))
            loaded.append(seconds)
            expected = 2 * args.jobs  # started and completed
            misses += sum(1 for r in received if r < expected)
            stats_p50.append(statistics.median(reads) * 1000 if reads else float("nan"))
            print(f"clients received {min(received)} to {max(received)} events (of {expected})")
        finally:
            drop_database(args.dsn, dsn)

    base, busy = statistics.median(alone), statistics.median(loaded)
    rate = 2 * args.jobs / busy
    slowdown = busy / base - 1
    print()
    print("| | drain seconds (median) | transitions/s |")
    print("|---|---|---|")
    each = {"alone": ", ".join(f"{s:.2f}" for s in alone)}
    each["loaded"] = ", ".join(f"{s:.2f}" for s in loaded)
    print(f"| worker alone | {base:.2f} ({each['alone']}) | {2 * args.jobs / base:,.0f} |")
    loaded_row = f"with {args.clients} SSE clients, API reads"
    print(f"| {loaded_row} | {busy:.2f} ({each['loaded']}) | {rate:,.0f} |")
    print()
    print(
        f"slowdown: {slowdown * 100:+.1f}%; clients that missed events: {misses}; "
        f"GET /stats p50 while loaded: {statistics.median(stats_p50):.1f} ms"
    )
    return 0 if slowdown <= 0.05 and misses == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
