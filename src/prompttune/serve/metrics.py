"""Prometheus metrics of one server (its own registry, so two servers in one process do not mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self, depth, tasks, cache) -> None:
        """``depth()``: rows queued; ``tasks()``: the served tasks; ``cache``: the PrefixCache (hits, bytes)."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "prompttune_requests", "HTTP requests by task, endpoint and status", ["task", "endpoint", "status"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "prompttune_request_seconds", "Request latency by task and endpoint", ["task", "endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.reloads = Counter(
            "prompttune_task_reloads", "Tasks loaded again because their registry label moved", ["task"], registry=r
        )
        self.batch_rows = Histogram("prompttune_batch_rows", "Rows per batch", buckets=BATCH_BUCKETS, registry=r)
        self.batch_tasks = Histogram(
            "prompttune_batch_tasks", "Distinct tasks per batch", buckets=BATCH_BUCKETS, registry=r
        )
        Gauge("prompttune_queue_rows", "Rows waiting in the queue", registry=r).set_function(depth)
        Gauge("prompttune_tasks", "Tasks served", registry=r).set_function(lambda: len(tasks()))
        r.register(_CacheCollector(cache))

    def reloaded(self, task: str) -> None:
        self.reloads.labels(task).inc()

    def batch(self, rows: int, tasks: int) -> None:
        self.batch_rows.observe(rows)
        self.batch_tasks.observe(tasks)

    def request(self, task: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(task, endpoint, str(status)).inc()
        self.latency.labels(task, endpoint).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _CacheCollector:
    """The prefix cache's counters and sizes, read when /metrics is asked for."""

    def __init__(self, cache) -> None:
        self.cache = cache

    def collect(self):
        c = self.cache
        for name, what, value in (
            ("hits", "Forward passes that found a task's prefix cached", c.hits),
            ("misses", "Forward passes that computed a task's prefix (first use, or after eviction)", c.misses),
            ("evictions", "Prefixes dropped to stay within --prefix-cache-mb", c.evictions),
        ):
            yield CounterMetricFamily(f"prompttune_prefix_cache_{name}", what, value=value)
        yield GaugeMetricFamily("prompttune_prefix_cache_bytes", "Bytes of cached task prefixes (keys/values)", c.bytes)
        budget = -1 if c.budget is None else c.budget
        yield GaugeMetricFamily("prompttune_prefix_cache_budget_bytes", "--prefix-cache-mb in bytes (-1: none)", budget)
