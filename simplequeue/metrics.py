"""Prometheus metrics (the `metrics` or `web` extra): the queue's state as the tables show
it (for the HTTP API's `/metrics`), and one worker process's counters (for `simplequeue
worker --metrics-port`).

Both are read when scraped, never kept up to date on the jobs' path: a scrape costs one
query (the tables) or nothing (the process's counters).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from simplequeue.fleet import WorkerInfo
from simplequeue.stats import HistogramSnapshot, QueueStats, QueueSummary

__all__ = ["ProcessCollector", "queue_metrics"]

_BY_STATUS = ("due", "scheduled", "running", "retrying", "dead", "dlq")


class _Snapshot(Collector):
    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        yield from self._families


def queue_metrics(summaries: list[QueueSummary], workers: list[WorkerInfo]) -> bytes:
    """The exposition text of the tables' state: jobs by queue and state, the oldest due
    wait, throughput, pauses, live workers."""
    jobs = GaugeMetricFamily(
        "simplequeue_jobs", "jobs by queue and state", labels=["queue", "state"]
    )
    oldest = GaugeMetricFamily(
        "simplequeue_oldest_due_seconds",
        "how long the oldest due job of the queue has waited",
        labels=["queue"],
    )
    completed = GaugeMetricFamily(
        "simplequeue_completed_per_minute",
        "jobs completed per minute over the last window",
        labels=["queue"],
    )
    paused = GaugeMetricFamily("simplequeue_queue_paused", "1 when paused", labels=["queue"])
    for s in summaries:
        for state in _BY_STATUS:
            jobs.add_metric([s.queue, state], getattr(s, state))
        oldest.add_metric([s.queue], s.oldest_due_seconds or 0.0)
        completed.add_metric([s.queue], s.completed_per_minute)
        paused.add_metric([s.queue], 1.0 if s.paused else 0.0)
    alive = GaugeMetricFamily("simplequeue_workers", "workers by liveness", labels=["alive"])
    alive.add_metric(["true"], sum(1 for w in workers if w.alive))
    alive.add_metric(["false"], sum(1 for w in workers if not w.alive))
    registry = CollectorRegistry()
    registry.register(_Snapshot([jobs, oldest, completed, paused, alive]))
    return generate_latest(registry)


class ProcessCollector(Collector):
    """One worker process's counters (`SimpleQueue.stats()`), read at each scrape."""

    def __init__(self, stats: Callable[[], QueueStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        stats = self._stats()
        counters = {
            "claims": ("claim statements run", stats.claims),
            "claimed": ("jobs claimed", stats.claimed),
            "results_written": ("results stored", stats.results_written),
            "results_fenced_off": ("results of runs no longer theirs", stats.results_fenced_off),
            "results_refused": ("results the database refused", stats.results_refused),
            "lost_runs": ("runs cancelled or taken over while running", stats.lost_runs),
            "heartbeat_failures": ("heartbeat rounds that failed", stats.heartbeat_failures),
            "database_failures": ("failed uses of the database", stats.database_failures),
            "service_restarts": ("background services restarted", stats.service_restarts),
        }
        for name, (help_text, value) in counters.items():
            yield CounterMetricFamily(f"simplequeue_worker_{name}", help_text, value=value)
        processed = CounterMetricFamily(
            "simplequeue_worker_processed",
            "attempts whose outcome was stored, by the status it gave the job",
            labels=["outcome"],
        )
        for outcome, n in sorted(stats.outcomes.items()):
            processed.add_metric([outcome], n)
        yield processed
        gauges = {
            "running": ("jobs running now", stats.running),
            "results_buffered": ("results waiting to be written", stats.results_buffered),
            "listener_connected": ("1 while LISTEN is in place", int(stats.listener_connected)),
            "leader": ("1 while this worker leads the maintenance", int(stats.leader)),
        }
        for name, (help_text, value) in gauges.items():
            yield GaugeMetricFamily(f"simplequeue_worker_{name}", help_text, value=value)
        histograms = {
            "handler_seconds": ("how long handlers ran", stats.handler_seconds),
            "pickup_seconds": ("from a job's due time to its claim", stats.pickup_seconds),
            "claim_batch_size": ("jobs per claim that found any", stats.claim_batch),
            "result_batch_size": ("outcomes per result write", stats.result_batch),
        }
        for name, (help_text, snapshot) in histograms.items():
            yield _histogram(f"simplequeue_worker_{name}", help_text, snapshot)


def _histogram(name: str, help_text: str, snapshot: HistogramSnapshot) -> HistogramMetricFamily:
    """Prometheus buckets are cumulative, the last one +Inf."""
    running, buckets = 0, []
    for bound, count in zip((*snapshot.bounds, float("inf")), snapshot.counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return HistogramMetricFamily(name, help_text, buckets=buckets, sum_value=snapshot.sum)
