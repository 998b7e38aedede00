"""OpenTelemetry spans (the `otel` extra): one per insert, one per processing of a job, the
producer's trace context carried in the job (`trace_context`) so the worker's span
continues the producer's trace, whatever process and however much later it runs.

Until the application imports OpenTelemetry (it must, to configure a tracer provider, and
so does `opentelemetry-instrument`), this module does nothing and imports nothing of it: a
process that does not trace is spared its modules (about 3 MB). With the API imported and
no SDK configured, spans are OpenTelemetry's no-ops and no context is stored.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simplequeue.job import Job

__all__ = ["inserting", "processing"]

SYSTEM = "simplequeue"


def _api() -> tuple[ModuleType, ModuleType] | None:
    """OpenTelemetry's trace and propagate modules, once the application imported them
    (a None there is a module whose import the process blocks)."""
    if sys.modules.get("opentelemetry.trace") is None:
        return None
    from opentelemetry import propagate, trace

    return trace, propagate


@contextlib.contextmanager
def inserting(jobs: Sequence[Job]) -> Iterator[None]:
    """A producer span around an insert; each job without a trace context of its own
    gets this span's. The span is not made current: the insert is a plan that may yield
    to its driver in between."""
    api = _api()
    if api is None or not jobs:
        yield
        return
    trace, propagate = api
    queues = sorted({job.queue for job in jobs})
    span = trace.get_tracer(SYSTEM).start_span(
        f"{SYSTEM} insert {', '.join(queues)}"[:200],
        kind=trace.SpanKind.PRODUCER,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.destination.name": queues[0] if len(queues) == 1 else "",
            "messaging.batch.message_count": len(jobs),
        },
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    for job in jobs:
        if job.trace_context is None and carrier:
            job.trace_context = dict(carrier)
    try:
        yield
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(trace.StatusCode.ERROR)
        raise
    finally:
        span.end()


def processing(job: Job) -> contextlib.AbstractContextManager[Any]:
    """A consumer span around one attempt, the current span while the handler runs (its
    own spans nest under it), child of the producer's span when the job carries it."""
    api = _api()
    return _NOTHING if api is None else _processing(job, *api)


_NOTHING: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()


@contextlib.contextmanager
def _processing(job: Job, trace: ModuleType, propagate: ModuleType) -> Iterator[Any]:
    parent = propagate.extract(job.trace_context or {})
    with trace.get_tracer(SYSTEM).start_as_current_span(
        f"{SYSTEM} process {job.queue}"[:200],
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.destination.name": job.queue,
            "messaging.message.id": str(job.id),
            "simplequeue.attempt": job.attempt,
        },
    ) as span:
        yield span
