"""Prometheus metrics of one server (its own registry, so two servers in one process do not mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self, depth, tasks) -> None:
        """``depth()``: rows queued; ``tasks()``: the served tasks (for their count and prefix bytes)."""
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
        self.batch_rows = Histogram("prompttune_batch_rows", "Rows per batch", buckets=BATCH_BUCKETS, registry=r)
        self.batch_tasks = Histogram(
            "prompttune_batch_tasks", "Distinct tasks per batch", buckets=BATCH_BUCKETS, registry=r
        )
        Gauge("prompttune_queue_rows", "Rows waiting in the queue", registry=r).set_function(depth)
        Gauge("prompttune_tasks", "Tasks served", registry=r).set_function(lambda: len(tasks()))
        Gauge("prompttune_prefix_cache_bytes", "Bytes of cached task prefixes (keys/values)", registry=r).set_function(
            lambda: sum(t.prefix_bytes() for t in tasks())
        )

    def batch(self, rows: int, tasks: int) -> None:
        self.batch_rows.observe(rows)
        self.batch_tasks.observe(tasks)

    def request(self, task: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(task, endpoint, str(status)).inc()
        self.latency.labels(task, endpoint).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
