"""`prompttune serve` generation over real HTTP on loopback, streamed, reported as vLLM's serving benchmark does:
requests/s, output tokens/s (the text re-tokenized), time to first token (TTFT), time per output token after the
first (TPOT) and inter-token latency (ITL, between streamed pieces), p50 and p99.

Default decoder, mixed tasks (soft prompts of four methods continuing their own prompts, and two generation
templates), N streamed completions of ``--max-tokens`` new tokens from C concurrent clients, each for a
uniformly random task. Bounded: N requests, then it stops. Untrained prompts: the speed does not depend on
the values. ``--prefix-cache-mb`` applies the server's budget.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_serve_generation.py --requests 64 --clients 8 --max-tokens 32

Tiny check (tests' random model folder):  --model PATH --requests 4 --clients 2 --max-tokens 8
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

PROMPTS = ["Tell me about the sea.", "Write one line about a cat.", "What is a good breakfast?", "Describe rain."]
SOFT = [("pt", "prompt-tuning"), ("ptune", "p-tuning"), ("prefix", "prefix-tuning"), ("deep", "p-tuning-v2")]


def build(folder: Path, model: str | None) -> list[str]:
    from prompttune import Backbone
    from prompttune.prompt_task import PromptTask

    backbone = Backbone.load(model)
    tasks = []
    for name, method in SOFT:
        task = PromptTask.create(backbone, ["negative", "positive"], method, {"num_virtual_tokens": 16})
        task.save(folder / name)
        tasks.append(f"{name}={folder / name}")
    return tasks + ["qa=qa", "cot=cot"]


def one(c: httpx.Client, task: str, prompt: str, max_tokens: int, count) -> dict:
    body = {"model": task, "prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0}
    t0 = time.perf_counter()
    times, text = [], ""
    with c.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return {"error": r.status_code}
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                return {"error": event["error"]["code"]}
            piece = event["choices"][0]["text"]
            if piece:
                times.append(time.perf_counter() - t0)
                text += piece
    end = time.perf_counter() - t0
    tokens = count(text)
    out = {"e2e": end, "tokens": tokens, "ttft": times[0] if times else end}
    out["tpot"] = (end - out["ttft"]) / (tokens - 1) if tokens > 1 else None
    out["itl"] = [b - a for a, b in zip(times, times[1:], strict=False)]
    return out


def pct(values: list[float], p: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--model", default=None)
    ap.add_argument("--prefix-cache-mb", type=float, default=None)
    args = ap.parse_args()
    if not 1 <= args.requests <= 10_000 or not 1 <= args.clients <= 256 or not 1 <= args.max_tokens <= 512:
        raise SystemExit("--requests 1..10000, --clients 1..256, --max-tokens 1..512")
    from prompttune.serve import ServeConfig, build_table, create_app
    from prompttune.serve.runner import ThreadedServer

    with tempfile.TemporaryDirectory() as tmp:
        tasks = build(Path(tmp), args.model)
        table = build_table(ServeConfig(model=args.model, prefix_cache_mb=args.prefix_cache_mb), tasks)
        names = table.names()
        tok = table.get(names[0]).backbone.tokenizer
        count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        rng = random.Random(0)
        plan = [(rng.choice(names), rng.choice(PROMPTS)) for _ in range(args.requests)]
        config = ServeConfig(max_queue=100_000, timeout_s=600, max_tokens=max(512, args.max_tokens))
        with ThreadedServer(create_app(config, table)) as s, httpx.Client(base_url=s.url, timeout=600) as c:
            one(c, names[0], PROMPTS[0], 2, count)  # warm-up
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                results = list(pool.map(lambda p: one(c, p[0], p[1], args.max_tokens, count), plan))
            seconds = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    print(f"{len(names)} tasks ({', '.join(names)}); {args.requests} streamed completions of up to "
          f"{args.max_tokens} tokens, {args.clients} clients")  # fmt: skip
    print(
        f"errors {len(results) - len(ok)}; {seconds:.1f} s; load avg {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    if not ok:
        return
    tokens = sum(r["tokens"] for r in ok)
    print(f"requests/s {len(ok) / seconds:.2f}   output tokens/s {tokens / seconds:.1f}   "
          f"mean output tokens {tokens / len(ok):.1f}")  # fmt: skip
    for name, values in (
        ("TTFT", [r["ttft"] for r in ok]),
        ("TPOT", [r["tpot"] for r in ok if r["tpot"] is not None]),
        ("ITL", [x for r in ok for x in r["itl"]]),
        ("E2E", [r["e2e"] for r in ok]),
    ):
        if values:
            print(f"{name:5s} ms  mean {1000 * statistics.fmean(values):8.1f}  p50 {1000 * pct(values, 50):8.1f}  "
                  f"p99 {1000 * pct(values, 99):8.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
