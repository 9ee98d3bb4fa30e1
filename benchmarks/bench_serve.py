"""`prompttune serve` throughput over real HTTP on loopback: mixed-task batching vs --max-batch 1.

Default decoder, tasks of every label-word method (untrained prompts: the speed does not depend on the
values) and two hard prompts; N classification requests of 1 row each from C concurrent clients, each
request for a uniformly random task. Bounded: N requests per configuration, then it stops.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_serve.py --requests 400 --clients 16

Prints requests/s, p50/p99 latency, errors, resident memory and the load average (the machine's 2 cores are
shared). Two more scenarios of issue 13 (tiny check: add --model PATH of a small random model):

    --many 1000 --prefix-cache-mb 64   one soft prompt served under 1,000 names (each its own task and prefix),
                                       uniform random traffic over all of them, within the prefix cache budget
    --long-prefix 1000                 the classify template with ~1,000 tokens of system text added, and as it
                                       is (~40 prefix tokens), each served alone: what a long cached prefix costs
"""

from __future__ import annotations

import argparse
import json
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


FILLER = "The reviewer writes about films, their actors and their makers. "  # ~13 tokens


def build(folder: Path, model: str | None, many: int = 0, long_prefix: int = 0) -> tuple[list[str], dict]:
    from prompttune import Backbone
    from prompttune.prompt_task import PromptTask

    backbone = Backbone.load(model)
    if many:
        PromptTask.create(backbone, ["negative", "positive"], "prompt-tuning", {"num_virtual_tokens": 16}).save(
            folder / "pt"
        )
        return [f"t{i}={folder / 'pt'}" for i in range(many)], {}
    if long_prefix:  # the built-in classify template as it is, and with a long system text before its own
        from prompttune.core.template import BUILTIN

        long = FILLER * max(1, long_prefix // len(backbone.tokenize(FILLER)))
        for name, system in (("short", ""), ("long", long)):
            spec = {**BUILTIN["classify"], "system": system + BUILTIN["classify"]["system"]}
            (folder / f"{name}.json").write_text(json.dumps(spec))
        both = "negative,positive"
        return [f"short={folder / 'short.json'}", f"long={folder / 'long.json'}"], {"short": both, "long": both}
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
    errors, first_error = 0, []

    def one(c: httpx.Client, task: str, text: str) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        r = c.post(f"/v1/tasks/{task}/predict", json={"inputs": [text]})
        latencies.append(time.perf_counter() - t0)
        if r.status_code != 200:
            errors += 1
            first_error.append(r.text[:300])

    with httpx.Client(base_url=url, timeout=300, limits=httpx.Limits(max_connections=clients)) as c:
        one(c, names[0], TEXTS[0])  # warm-up
        latencies.clear()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda p: one(c, *p), plan))
        seconds = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return {"req_per_s": requests / seconds, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "errors": errors,
            "seconds": seconds, "load_avg": os.getloadavg(), "first_error": first_error[:1]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--many", type=int, default=0, help="serve one soft prompt under this many names")
    ap.add_argument("--long-prefix", type=int, default=0, help="tokens of the long hard prompt's system text")
    ap.add_argument("--prefix-cache-mb", type=float, default=None)
    args = ap.parse_args()
    if not 1 <= args.requests <= 100_000 or not 1 <= args.clients <= 256:
        raise SystemExit("--requests 1..100000, --clients 1..256")
    if not 0 <= args.many <= 1024 or not 0 <= args.long_prefix <= 8192:
        raise SystemExit("--many 0..1024, --long-prefix 0..8192")
    from prompttune.serve import ServeConfig, build_table, create_app
    from prompttune.serve.runner import ThreadedServer

    with tempfile.TemporaryDirectory() as tmp:
        tasks, labels = build(Path(tmp), args.model, args.many, args.long_prefix)
        table = build_table(ServeConfig(model=args.model, prefix_cache_mb=args.prefix_cache_mb), tasks, labels)
        names = table.names()
        shown = ", ".join(names) if len(names) <= 10 else f"{names[0]} .. {names[-1]}"
        print(f"{len(names)} tasks: {shown}; {args.requests} requests, {args.clients} clients; RSS {rss_mb():.0f} MB")
        if args.long_prefix:
            runs = [(f"{n} ({prefix_tokens(table, n)} prefix tokens)", args.max_batch, 5.0, [n]) for n in names[::-1]]
        else:
            runs = [("mixed", args.max_batch, 5.0, names)] + ([] if args.many else [("one row", 1, 0.0, names)])
        for label, max_batch, wait, targets in runs:
            config = ServeConfig(max_batch=max_batch, max_wait_ms=wait, max_queue=100_000, timeout_s=600)
            with ThreadedServer(create_app(config, table)) as s:
                res = load(s.url, targets, args.requests, args.clients)
            la = ", ".join(f"{x:.2f}" for x in res["load_avg"])
            print(
                f"{label:8s} --max-batch {max_batch:3d}: {res['req_per_s']:7.1f} req/s  p50 {res['p50_ms']:7.1f} ms  "
                f"p99 {res['p99_ms']:7.1f} ms  errors {res['errors']}  ({res['seconds']:.1f} s, load avg {la})  "
                f"RSS {rss_mb():.0f} MB"
            )
            for e in res["first_error"]:
                print(f"  first error: {e}")
        c = table.cache
        print(f"prefix cache: {c.hits} hits, {c.misses} misses, {c.evictions} evictions, {c.bytes / 2**20:.1f} MB held")


def rss_mb() -> float:
    """This process's resident memory now (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prefix_tokens(table, name: str) -> int:
    kv = table.get(name).task.model.cached_prefix()
    return kv[0][0].shape[2] if kv else 0


if __name__ == "__main__":
    main()
