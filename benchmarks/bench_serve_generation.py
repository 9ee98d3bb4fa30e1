"""`prompttune serve` generation over real HTTP on loopback, streamed, reported as vLLM's serving benchmark does:
requests/s, output tokens/s (the text re-tokenized), time to first token (TTFT), time per output token after the
first (TPOT) and inter-token latency (ITL, between streamed pieces), p50 and p99.

Default decoder, mixed tasks (soft prompts of four methods continuing their own prompts, and two generation
templates), N streamed completions of ``--max-tokens`` new tokens from C concurrent clients, each for a
uniformly random task. Bounded: N requests, then it stops. Untrained prompts: the speed does not depend on
the values. ``--prefix-cache-mb`` applies the server's budget.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_serve_generation.py --requests 64 --clients 8 --max-tokens 32

Tiny check (tests' random model folder):  --model PATH --requests 8 --clients 4 --max-tokens 8

Each configuration is a ``prompttune serve`` subprocess on a free loopback port: the server as it is
(``--max-batch``, completions waiting together decoded in one batched loop) and, unless ``--no-batch1``, the same
with ``--max-batch 1`` (one completion at a time), for the batching gain. The figures are printed in the layout
of vLLM's ``benchmark_serving.py`` (mean, median and P99 of TTFT, TPOT, ITL and end-to-end latency), then one JSON
object. Output tokens are the streamed text re-tokenized.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from bench_serve_parts import Server, machine_load

PROMPTS = ["Tell me about the sea.", "Write one line about a cat.", "What is a good breakfast?", "Describe rain."]
SOFT = [("pt", "prompt-tuning"), ("ptune", "p-tuning"), ("prefix", "prefix-tuning"), ("deep", "p-tuning-v2")]


def build(folder: Path, model: str | None) -> tuple[list[str], object]:
    from prompttune import Backbone
    from prompttune.prompt_task import PromptTask

    backbone = Backbone.load(model)
    tasks = []
    for name, method in SOFT:
        task = PromptTask.create(backbone, ["negative", "positive"], method, {"num_virtual_tokens": 16})
        task.save(folder / name)
        tasks.append(f"{name}={folder / name}")
    return tasks + ["qa=qa", "cot=cot"], backbone.tokenizer


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


def run_load(url: str, plan, max_tokens: int, clients: int, count) -> tuple[list[dict], float]:
    with httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients)) as c:
        with ThreadPoolExecutor(clients) as pool:  # warm-up: a concurrent burst of short completions
            list(pool.map(lambda p: one(c, p[0], p[1], 2, count), plan[: 2 * clients]))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda p: one(c, p[0], p[1], max_tokens, count), plan))
        return results, time.perf_counter() - t0


def summary(results: list[dict], seconds: float) -> dict:
    """The figures vLLM's benchmark_serving prints (ms), from the successful requests."""
    ok = [r for r in results if "error" not in r]
    out = {"successful_requests": len(ok), "failed_requests": len(results) - len(ok), "duration_s": seconds}
    if not ok:
        return out
    tokens = sum(r["tokens"] for r in ok)
    out |= {"total_generated_tokens": tokens, "request_throughput": len(ok) / seconds,
            "output_token_throughput": tokens / seconds}  # fmt: skip
    for name, values in (
        ("ttft", [r["ttft"] for r in ok]),
        ("tpot", [r["tpot"] for r in ok if r["tpot"] is not None]),
        ("itl", [x for r in ok for x in r["itl"]]),
        ("e2el", [r["e2e"] for r in ok]),
    ):
        if values:
            out |= {f"mean_{name}_ms": 1000 * statistics.fmean(values), f"median_{name}_ms": 1000 * pct(values, 50),
                    f"p99_{name}_ms": 1000 * pct(values, 99)}  # fmt: skip
    return out


def show(title: str, s: dict) -> None:
    """vLLM's layout: one block per configuration."""
    print(f"{'=' * 16} {title} {'=' * max(0, 34 - len(title))}")
    rows = [("Successful requests:", "successful_requests", "d"), ("Failed requests:", "failed_requests", "d"),
            ("Benchmark duration (s):", "duration_s", ".2f"),
            ("Total generated tokens:", "total_generated_tokens", "d"),
            ("Request throughput (req/s):", "request_throughput", ".2f"),
            ("Output token throughput (tok/s):", "output_token_throughput", ".2f")]  # fmt: skip
    for name, label in (("ttft", "Time to First Token"), ("tpot", "Time per Output Token (excl. 1st token)"),
                        ("itl", "Inter-token Latency"), ("e2el", "End-to-end Latency")):  # fmt: skip
        rows += [(f"{label}: mean (ms):", f"mean_{name}_ms", ".2f"), ("  median (ms):", f"median_{name}_ms", ".2f"),
                 ("  P99 (ms):", f"p99_{name}_ms", ".2f")]  # fmt: skip
    for label, key, fmt in rows:
        if key in s:
            print(f"{label:<42s}{format(s[key], fmt):>10s}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--model", default=None)
    ap.add_argument("--prefix-cache-mb", type=float, default=None)
    ap.add_argument("--no-batch1", action="store_true", help="skip the --max-batch 1 server (one at a time)")
    args = ap.parse_args()
    if not 1 <= args.requests <= 10_000 or not 1 <= args.clients <= 256 or not 1 <= args.max_tokens <= 512:
        raise SystemExit("--requests 1..10000, --clients 1..256, --max-tokens 1..512")
    if not 1 <= args.max_batch <= 1024:
        raise SystemExit("--max-batch 1..1024")
    with tempfile.TemporaryDirectory() as tmp:
        tasks, tok = build(Path(tmp), args.model)
        names = [t.split("=", 1)[0] for t in tasks]
        count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        rng = random.Random(0)
        plan = [(rng.choice(names), rng.choice(PROMPTS)) for _ in range(args.requests)]
        extra = ["--max-tokens", str(max(512, args.max_tokens))]
        if args.prefix_cache_mb is not None:
            extra += ["--prefix-cache-mb", str(args.prefix_cache_mb)]
        configs = [("batched", args.max_batch)] + ([] if args.no_batch1 else [("one at a time", 1)])
        results = {}
        print(f"{len(names)} tasks ({', '.join(names)}); {args.requests} streamed completions of up to "
              f"{args.max_tokens} tokens, {args.clients} clients; load {machine_load()}", flush=True)  # fmt: skip
        for title, max_batch in configs:
            flags = [*extra, "--max-batch", str(max_batch), "--max-wait-ms", "5" if max_batch > 1 else "0"]
            with Server(tasks, {}, args.model, flags, Path(tmp) / f"{max_batch}.log") as s:
                raw, seconds = run_load(s.url, plan, args.max_tokens, args.clients, count)
            results[title] = summary(raw, seconds) | {"max_batch": max_batch, "load_avg": machine_load()}
            show(f"{title} (--max-batch {max_batch})", results[title])
    if len(results) == 2:
        a, b = results["batched"], results["one at a time"]
        if a.get("request_throughput") and b.get("request_throughput"):
            print(f"batched / one at a time: {a['request_throughput'] / b['request_throughput']:.2f}x requests/s")
    print(json.dumps({"args": vars(args), "results": results}))


if __name__ == "__main__":
    main()
