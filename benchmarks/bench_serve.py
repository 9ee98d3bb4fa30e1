"""Issue 13's serving targets in ONE run: `prompttune serve` over real HTTP on loopback vs its baselines.

The full run (default decoder; the lead runs it on a quiet machine; about an hour on 2 CPU cores):

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_serve.py --requests 4000 --clients 32 \
        --predict-requests 16 --peft-requests 4000 --many 1000 --many-cache-mb 256 --many-cache-dtype int8 \
        --long-prefix 1000 --json-out /tmp/bench_serve.json

Tiny check (a random model folder, as tests/tiny.py builds one with 4,096 positions):

    .venv/bin/python benchmarks/bench_serve.py --model PATH --requests 64 --clients 8 --predict-requests 2 \
        --peft-requests 32 --many 20 --long-prefix 200 --system-tokens 60

Eight tasks on one backbone (untrained: the speed does not depend on the values): two prompt tuning (pt-a, pt-b),
P-tuning (ptune), prefix tuning (prefix), P-tuning v2 (deep), a zero-shot hard prompt with a long system text
(zero, ~``--system-tokens`` tokens), a few-shot hard prompt (few, 4 demos), a classification head task (head).
N predict requests of 1 row each from C concurrent clients, each for a uniformly random task. Each server is a
``prompttune serve`` subprocess on a free loopback port, healthy before the load, SIGTERM-stopped after it;
its resident memory (VmRSS) is read after the load. Configurations, side by side:

  (a) mixed      the 8-task server, --max-batch 32 (tasks mixed in one forward pass)
  (b) batch 1    the same server with --max-batch 1 --max-wait-ms 0              target a/b >= 3
  (c) one task   a server holding only pt-a, the same load on it                 target a/c >= 0.8
  (d) predict    one `prompttune predict ARTIFACT TEXT` process per request (the status quo), sequential,
                 --predict-requests of them over the 6 artifacts                target a/d >= 10
  (e) PEFT       one PeftModel per soft-prompt task (each artifact exported with prompttune.interop's
                 export_peft, loaded with PeftModel.from_pretrained over ONE base model), hard prompts on the
                 base model, each request alone (full prompt in one forward, label words read at the end), a
                 loop in its own process: no HTTP cost (which favours PEFT); the head task is left out (PEFT
                 has no classification head over a causal LM's prompt). Latency = one forward.  target a/e >= 3
  memory         RSS of (a)'s server (8 tasks) / (c)'s (1 task)                  target <= 1.15
  many           --many names of one soft prompt (each its own task and prefix), --prefix-cache-mb
                 --many-cache-mb, --prefix-cache-dtype --many-cache-dtype (int8: a quarter of float32),
                 uniform traffic over all: throughput / (a)                      target >= 0.7
                 and RSS / (c)'s                                                 target <= 1.5
  each alone     (--each-alone) the 8-task server of (a), the same load sent to one task at a time: what the mix
                 would give if mixing itself cost nothing (8 / the sum of 1 / each task's req/s, since uniform
                 traffic spends 1/8 of its requests on each), so mixed / that is the cost of mixing alone, apart
                 from the heavier tasks' longer prefixes                                    (reported)
  long prefix    the classify template with ~--long-prefix tokens of system text vs as it is (~20-40 prefix
                 tokens), one server holding both, each loaded alone: long / short throughput  target >= 0.8

Prints a table, the ratios with their targets, and one JSON object (last line; also --json-out). Bounded:
each configuration sends its N requests, then stops.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from bench_serve_parts import TEXTS, Server, load, machine_load, peft_baseline, predict_processes

EXACT = "[soft]Review: {{ text }} Sentiment: [label]"  # soft tokens first: exports to PEFT exactly
SOFT = [("pt-a", "prompt-tuning", 0, EXACT), ("pt-b", "prompt-tuning", 1, EXACT), ("ptune", "p-tuning", 0, EXACT),
        ("prefix", "prefix-tuning", 0, None), ("deep", "p-tuning-v2", 0, None)]  # fmt: skip
LABELS = ["negative", "positive"]
FILLER = "The reviewer writes about films, their actors and their makers. "  # ~13 tokens
DEMOS = [{"text": "I loved it", "label": "positive"}, {"text": "what a waste", "label": "negative"},
         {"text": "a joy to watch", "label": "positive"}, {"text": "boring and bad", "label": "negative"}]  # fmt: skip


def classify_with(folder: Path, name: str, backbone, system_tokens: int = 0, demos=()) -> Path:
    """The built-in classify template with ~system_tokens of system text before its own, and demos, as a file."""
    from prompttune.core.template import BUILTIN

    long = FILLER * (system_tokens // len(backbone.tokenize(FILLER))) if system_tokens else ""
    spec = {**BUILTIN["classify"], "system": long + BUILTIN["classify"]["system"], "demos": list(demos)}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def build(folder: Path, args) -> dict:
    """Artifacts and template files; the task specs of each scenario; the PEFT worker's plan."""
    import random

    from prompttune import Backbone
    from prompttune.core.data import from_records
    from prompttune.core.errors import PromptTuneError
    from prompttune.core.template import SoftSlot
    from prompttune.heads.task import HeadTask
    from prompttune.interop.peft import export_peft
    from prompttune.prompt_task import PromptTask

    backbone = Backbone.load(args.model)
    specs, peft_tasks, models = [], {}, {}
    for name, method, seed, template in SOFT:
        task = PromptTask.create(backbone, LABELS, method, {"num_virtual_tokens": 16}, template, seed=seed)
        task.save(folder / name)
        specs.append(f"{name}={folder / name}")
        models[name] = task.model
        try:
            export_peft(folder / name, folder / f"{name}.peft", backbone)
            peft_tasks[name] = str(folder / f"{name}.peft")
        except PromptTuneError as e:
            print(f"PEFT baseline: {name} not exported ({e}); left out of the PEFT baseline")
    hard = {"zero": classify_with(folder, "zero", backbone, args.system_tokens),
            "few": classify_with(folder, "few", backbone, demos=DEMOS)}  # fmt: skip
    for name, path in hard.items():
        specs.append(f"{name}={path}")
        models[name] = PromptTask.create(backbone, LABELS, "zero-shot", {}, str(path)).model
        peft_tasks[name] = None  # the base model, the whole prompt each time
    HeadTask.create(backbone, "classification", LABELS, "p-tuning-v2", {"num_virtual_tokens": 16}).save(folder / "head")
    specs.append(f"head={folder / 'head'}")

    rng = random.Random(1)
    requests = []
    for _ in range(args.peft_requests):
        name = rng.choice(sorted(peft_tasks))
        m = models[name]
        hard_ids = [int(t) for s in m.segments if not isinstance(s, SoftSlot) for t in s.tolist()]
        row = m.encode(from_records([rng.choice(TEXTS)])).ids[0]
        requests.append((name, hard_ids + row))
    plan = {"model": args.model, "requests": requests,
            "tasks": {n: {"adapter": a, "label_ids": [ids[0] for ids in models[n].form_token_ids]}
                      for n, a in peft_tasks.items()}}  # fmt: skip
    (folder / "peft_plan.json").write_text(json.dumps(plan))
    out = {"tasks": specs, "labels": {"zero": ",".join(LABELS), "few": ",".join(LABELS)},
           "artifacts": [folder / n for n, *_ in SOFT] + [folder / "head"],
           "peft_plan": folder / "peft_plan.json"}  # fmt: skip
    if args.many:
        out["many"] = [f"t{i}={folder / 'pt-a'}" for i in range(args.many)]
    if args.long_prefix:
        short, long = (
            classify_with(folder, "short", backbone),
            classify_with(folder, "long", backbone, args.long_prefix),
        )
        out["long"] = [f"short={short}", f"long={long}"]
        out["long_tokens"] = {n: _prefix_tokens(backbone, p) for n, p in (("short", short), ("long", long))}
    return out


def _prefix_tokens(backbone, path: Path) -> int:
    from prompttune.prompt_task import PromptTask

    kv = PromptTask.create(backbone, LABELS, "zero-shot", {}, str(path)).model.cached_prefix()
    return kv[0][0].shape[2] if kv else 0


def serve(name: str, tasks, labels, targets, extra, args, folder: Path, results: dict) -> None:
    """Start a server, send the load (for each target set), record each run with the server's RSS."""
    names = [t.split("=", 1)[0] for t in tasks]
    with Server(tasks, labels, args.model, extra, folder / f"{name}.log") as s:
        print(f"  {name}: {len(names)} tasks loaded in {s.load_s:.0f} s; load {machine_load()}", flush=True)
        for label, keep in targets:
            res = load(s.url, [n for n in names if keep(n)], args.requests, args.clients)
            res["rss_mb"], res["load_avg"] = s.rss_mb(), machine_load()
            results[label] = res
            print(f"  {label}: {res['req_per_s']:.1f} req/s, errors {res['errors']}", flush=True)


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model id or folder (default: the default decoder)")
    ap.add_argument("--requests", type=int, default=4000, help="requests per server configuration")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="the batched servers' --max-wait-ms")
    ap.add_argument("--predict-requests", type=int, default=16, help="(d): prompttune predict processes")
    ap.add_argument("--peft-requests", type=int, default=4000, help="(e): requests the PEFT loop serves")
    ap.add_argument("--system-tokens", type=int, default=300, help="the zero-shot task's long system text")
    ap.add_argument("--many", type=int, default=1000, help="names of one soft prompt (0: skip)")
    ap.add_argument("--many-cache-mb", type=float, default=256.0, help="--prefix-cache-mb of the many-task server")
    ap.add_argument("--many-cache-dtype", default="int8", help="--prefix-cache-dtype of the many-task server")
    ap.add_argument("--long-prefix", type=int, default=1000, help="tokens of the long system text (0: skip)")
    ap.add_argument("--each-alone", action="store_true", help="also load (a)'s server one task at a time")
    ap.add_argument("--skip", default="", help="comma-separated configurations to leave out: b,d,e")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    bounds = [("--requests", args.requests, 1, 100_000), ("--clients", args.clients, 1, 256),
              ("--max-batch", args.max_batch, 1, 1024), ("--predict-requests", args.predict_requests, 1, 1000),
              ("--peft-requests", args.peft_requests, 1, 100_000), ("--system-tokens", args.system_tokens, 0, 4096),
              ("--many", args.many, 0, 1024), ("--long-prefix", args.long_prefix, 0, 8192)]  # fmt: skip
    for flag, value, low, high in bounds:
        if not low <= value <= high:
            raise SystemExit(f"{flag} {value}: give a whole number from {low} to {high}.")
    skip = {s for s in args.skip.split(",") if s}
    if skip - {"b", "d", "e"}:
        raise SystemExit(f"--skip {args.skip}: give some of b, d, e separated by commas.")

    results: dict[str, dict] = {}
    batch = ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        b = build(folder, args)
        threads = os.environ.get("OMP_NUM_THREADS", "unset")
        print(f"8 tasks; {args.requests} requests x 1 row, {args.clients} clients, uniform random task; "
              f"OMP_NUM_THREADS={threads}; load {machine_load()}", flush=True)  # fmt: skip
        targets = [("a_mixed", lambda n: True)]
        if args.each_alone:
            names = [t.split("=", 1)[0] for t in b["tasks"]]
            targets += [(f"alone_{n}", lambda m, n=n: m == n) for n in names]
            targets += [("a_mixed_again", lambda n: True)]  # the mix again after them: the machine's drift shows
        serve("a", b["tasks"], b["labels"], targets, batch, args, folder, results)
        if args.each_alone:
            alone = [results[f"alone_{n}"]["req_per_s"] for n in names]
            results["each_alone"] = {
                "req_per_s": len(alone) / sum(1 / x for x in alone) if all(alone) else 0.0,
                "per_task": dict(zip(names, alone, strict=True)),
            }
        if "b" not in skip:
            one = ["--max-batch", "1", "--max-wait-ms", "0"]
            serve("b", b["tasks"], b["labels"], [("b_batch1", lambda n: True)], one, args, folder, results)
        serve("c", [b["tasks"][0]], {}, [("c_one_task", lambda n: True)], batch, args, folder, results)
        if "d" not in skip:
            results["d_predict"] = predict_processes(b["artifacts"], args.predict_requests, args.model)
            print(f"  d_predict: {results['d_predict']['req_per_s']:.2f} req/s", flush=True)
        if "e" not in skip:
            results["e_peft"] = peft_baseline(b["peft_plan"])
            print(f"  e_peft: {results['e_peft']['req_per_s']:.1f} req/s", flush=True)
        if args.many:
            cache = ["--prefix-cache-mb", str(args.many_cache_mb), "--prefix-cache-dtype", args.many_cache_dtype]
            extra = [*batch, *cache]
            serve("many", b["many"], {}, [("many", lambda n: True)], extra, args, folder, results)
        if args.long_prefix:
            words = {"short": ",".join(LABELS), "long": ",".join(LABELS)}
            targets = [("short_prefix", lambda n: n == "short"), ("long_prefix", lambda n: n == "long")]
            serve("long", b["long"], words, targets, batch, args, folder, results)
            for n in ("short", "long"):
                results[f"{n}_prefix"]["prefix_tokens"] = b["long_tokens"][n]
    report(results, args)


def report(results: dict, args) -> None:
    a = results["a_mixed"]
    rows = [("a_mixed", f"8 tasks mixed, --max-batch {args.max_batch}"), ("b_batch1", "8 tasks, --max-batch 1"),
            ("c_one_task", "1 task"), ("d_predict", "prompttune predict per request"),
            ("e_peft", "PEFT, one PeftModel per task, 1 by 1"),
            ("many", f"{args.many} tasks, cache {args.many_cache_mb:g} MB {args.many_cache_dtype}"),
            ("short_prefix", "short hard prefix"), ("long_prefix", "long hard prefix")]  # fmt: skip
    print(f"\n{'configuration':40s} {'req/s':>9s} {'p50 ms':>9s} {'p99 ms':>9s} {'errors':>6s} {'RSS MB':>8s}")
    for key, label in rows:
        if key in results:
            r = results[key]
            if key.endswith("_prefix"):
                label += f" ({r['prefix_tokens']} tokens)"
            rss = f"{r['rss_mb']:8.0f}" if r.get("rss_mb") else f"{'-':>8s}"
            print(f"{label:40s} {r['req_per_s']:9.2f} {r['p50_ms']:9.1f} {r['p99_ms']:9.1f} {r['errors']:6d} {rss}")
    checks = [("mixed / batch 1", "a_mixed", "b_batch1", "req_per_s", ">=", 3.0),
              ("mixed / one task", "a_mixed", "c_one_task", "req_per_s", ">=", 0.8),
              ("mixed / each task alone (the mix's cost)", "a_mixed", "each_alone", "req_per_s", ">=", 0.8),
              ("mixed / predict processes", "a_mixed", "d_predict", "req_per_s", ">=", 10.0),
              ("mixed / PEFT", "a_mixed", "e_peft", "req_per_s", ">=", 3.0),
              ("RSS 8 tasks / 1 task", "a_mixed", "c_one_task", "rss_mb", "<=", 1.15),
              (f"{args.many} tasks / 8 tasks throughput", "many", "a_mixed", "req_per_s", ">=", 0.7),
              (f"RSS {args.many} tasks / 1 task", "many", "c_one_task", "rss_mb", "<=", 1.5),
              ("long / short prefix throughput", "long_prefix", "short_prefix", "req_per_s", ">=", 0.8)]  # fmt: skip
    ratios = {}
    print(f"\n{'ratio':40s} {'value':>8s} {'target':>9s}")
    for label, x, y, field, op, target in checks:
        if x in results and y in results:
            v = ratio(results[x][field], results[y][field])
            ok = v is not None and (v >= target if op == ">=" else v <= target)
            ratios[label] = {"value": v, "target": f"{op} {target}", "met": ok}
            print(f"{label:40s} {v:8.3f} {op + ' ' + str(target):>9s}  {'met' if ok else 'NOT met'}")
    if "each_alone" in results:
        per = ", ".join(f"{n} {v:.1f}" for n, v in results["each_alone"]["per_task"].items())
        print(f"each task alone on the 8-task server (req/s): {per}; if mixing were free: "
              f"{results['each_alone']['req_per_s']:.1f}; the mix again after them: "
              f"{results['a_mixed_again']['req_per_s']:.1f}")  # fmt: skip
    errors = sum(r.get("errors", 0) for r in results.values())
    print(f"errors in all: {errors}; load average now {machine_load()}; mixed run's load {a['load_avg']}")
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "results": results, "ratios": ratios, "errors": errors}
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
