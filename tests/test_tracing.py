"""OpenTelemetry: a span per insert and per processing, the producer's trace carried in
the job to the worker. The link between processes is the trace context in the row: it is
checked there, and followed by a worker in this process."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import simplequeue as sq
from tests.conftest import FAST, query

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans of this process, recorded in memory (the provider is set once per process)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def named(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


async def test_the_worker_continues_the_producers_trace(
    spans: InMemorySpanExporter, dsn: str
) -> None:
    done = asyncio.Event()
    inner: list[trace.SpanContext] = []

    class Traced(sq.Handler):
        QUEUE = "traced"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            with trace.get_tracer("app").start_as_current_span("send the email") as span:
                inner.append(span.get_span_context())
            done.set()

    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(Traced())
        tracer = trace.get_tracer("app")
        with tracer.start_as_current_span("signup") as request:
            job_id = await queue.insert_job(sq.Job("traced", {"to": "a@b.c"}))
        ((stored,),) = query(
            dsn, "SELECT trace_context FROM simplequeue.jobs WHERE id = %s", [job_id]
        )
        assert stored["traceparent"].split("-")[1] == format(
            request.get_span_context().trace_id, "032x"
        )
        await queue.start()
        await asyncio.wait_for(done.wait(), 10)
        await queue.stop()

    [insert] = named(spans, "simplequeue insert")
    [process] = named(spans, "simplequeue process")
    assert insert.kind is trace.SpanKind.PRODUCER and process.kind is trace.SpanKind.CONSUMER
    assert insert.parent is not None and insert.parent.span_id == request.get_span_context().span_id
    assert process.context.trace_id == request.get_span_context().trace_id
    assert process.parent is not None and process.parent.span_id == insert.context.span_id
    assert process.attributes is not None and process.attributes["messaging.message.id"] == str(
        job_id
    )
    assert inner[0].trace_id == process.context.trace_id  # the handler's spans nest under it


async def test_a_batch_shares_one_insert_span_and_a_failure_is_recorded(
    spans: InMemorySpanExporter, dsn: str
) -> None:
    async with sq.SimpleQueue.from_url(dsn) as queue:
        jobs = [sq.Job("a", {}), sq.Job("b", {})]
        await queue.insert_jobs(jobs)
        [insert] = named(spans, "simplequeue insert")
        assert insert.name == "simplequeue insert a, b"
        assert jobs[0].trace_context == jobs[1].trace_context
        assert jobs[0].trace_context is not None and "traceparent" in jobs[0].trace_context
        read = await queue.get_job(jobs[0].id)
        assert read is not None and read.trace_context == jobs[0].trace_context
        spans.clear()
        query(dsn, "ALTER TABLE simplequeue.jobs ADD CONSTRAINT no_c CHECK (queue <> 'c')")
        with pytest.raises(Exception, match="no_c"):
            await queue.insert_job(sq.Job("c", {}))
        [failed] = named(spans, "simplequeue insert")
        assert failed.status.status_code is trace.StatusCode.ERROR


async def test_a_trace_context_of_its_own_is_kept(dsn: str) -> None:
    """A job built with a context (relayed from elsewhere) keeps it rather than the insert's."""
    async with sq.SimpleQueue.from_url(dsn) as queue:
        job = sq.Job("q", {})
        job.trace_context = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
        await queue.insert_job(job)  # a context of its own is kept as it is
        read = await queue.get_job(job.id)
        assert read is not None and read.trace_context == job.trace_context


async def test_opentelemetry_blocked_from_import_traces_nothing(
    spans: InMemorySpanExporter, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sys.modules[name] = None` is how a process blocks a module's import: it counts as
    OpenTelemetry not imported, and inserting and processing go on without it."""
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        done = asyncio.Event()

        class Quiet(sq.Handler):
            QUEUE = "quiet"

            async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
                done.set()

        queue.register_handler(Quiet())
        await queue.start()
        jobs = [sq.Job("quiet", {}), sq.Job("quiet", {})]
        assert await queue.insert_jobs(jobs) == [job.id for job in jobs]
        await asyncio.wait_for(done.wait(), 10)
    assert jobs[0].trace_context is None and spans.get_finished_spans() == ()
