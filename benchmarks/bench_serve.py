"""`prompttune serve` throughput over real HTTP on loopback: mixed-task batching vs --max-batch 1.

Default decoder, tasks of every label-word method (untrained prompts: the speed does not depend on the
values) and two hard prompts; N classification requests of 1 row each from C concurrent clients, each
request for a uniformly random task. Bounded: N requests per configuration, then it stops.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_serve.py --requests 400 --clients 16

Prints requests/s, p50/p99 latency, errors and the load average (the machine's 2 cores are shared).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

TEXTS = ["a gripping, funny film", "dull and far too long", "the best thing I saw this year", "not worth it"]
SOFT = [("pt-a", "prompt-tuning", 0), ("pt-b", "prompt-tuning", 1), ("ptune", "p-tuning", 0),
        ("prefix", "prefix-tuning", 0), ("deep", "p-tuning-v2", 0)]  # fmt: skip


def build(folder: Path, model: str | None) -> tuple[list[str], dict]:
    from prompttune import Backbone
    from prompttune.prompt_task import PromptTask

    backbone = Backbone.load(model)
    tasks = []
    for name, method, seed in SOFT:
        task = PromptTask.create(backbone, ["negative", "positive"], method, {"num_virtual_tokens": 16}, seed=seed)
        task.save(folder / name)
        tasks.append(f"{name}={folder / name}")
    tasks += ["hard=classify", "instruct=classify-instruct"]
    return tasks, {"hard": "negative,positive", "instruct": "negative,positive"}


def load(url: str, names: list[str], requests: int, clients: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    plan = [(rng.choice(names), rng.choice(TEXTS)) for _ in range(requests)]
    latencies: list[float] = []
    errors = 0

    def one(c: httpx.Client, task: str, text: str) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        r = c.post(f"/v1/tasks/{task}/predict", json={"inputs": [text]})
        latencies.append(time.perf_counter() - t0)
        errors += r.status_code != 200

    with httpx.Client(base_url=url, timeout=300, limits=httpx.Limits(max_connections=clients)) as c:
        one(c, names[0], TEXTS[0])  # warm-up
        latencies.clear()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda p: one(c, *p), plan))
        seconds = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return {"req_per_s": requests / seconds, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "errors": errors,
            "seconds": seconds, "load_avg": os.getloadavg()}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-batch", type=int, default=32)
    args = ap.parse_args()
    if not 1 <= args.requests <= 100_000 or not 1 <= args.clients <= 256:
        raise SystemExit("--requests 1..100000, --clients 1..256")
    from prompttune.serve import ServeConfig, build_table, create_app
    from prompttune.serve.runner import ThreadedServer

    with tempfile.TemporaryDirectory() as tmp:
        tasks, labels = build(Path(tmp), args.model)
        table = build_table(ServeConfig(model=args.model), tasks, labels)
        names = table.names()
        print(f"{len(names)} tasks: {', '.join(names)}; {args.requests} requests, {args.clients} clients")
        for label, max_batch, wait in (("mixed", args.max_batch, 5.0), ("one row", 1, 0.0)):
            config = ServeConfig(max_batch=max_batch, max_wait_ms=wait, max_queue=100_000, timeout_s=600)
            with ThreadedServer(create_app(config, table)) as s:
                res = load(s.url, names, args.requests, args.clients)
            la = ", ".join(f"{x:.2f}" for x in res["load_avg"])
            print(
                f"{label:8s} --max-batch {max_batch:3d}: {res['req_per_s']:7.1f} req/s  p50 {res['p50_ms']:7.1f} ms  "
                f"p99 {res['p99_ms']:7.1f} ms  errors {res['errors']}  ({res['seconds']:.1f} s, load avg {la})"
            )


if __name__ == "__main__":
    main()
