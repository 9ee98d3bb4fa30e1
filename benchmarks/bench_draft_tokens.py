"""Prompt-lookup decoding (``--draft-tokens``) against plain greedy decoding, on the same artifact and inputs.

Decodes E2E NLG inputs (the benchmark's 64 distinct meaning representations from the end of
../shared/data/e2e_nlg/dev.jsonl, read in place) with a generation artifact, once per ``--drafts`` setting, 16 rows
at a time (continuous batching), and prints for each: the model passes, tokens/s and how many outputs equal
those of the first setting. Without ``--artifact`` it first trains prefix tuning for 30 steps as
``bench_generation_vs_peft.py`` does and keeps it in a temporary folder.

    .venv/bin/python benchmarks/bench_draft_tokens.py --dtype bfloat16 --drafts 0,2,3,0,2
    .venv/bin/python benchmarks/bench_draft_tokens.py --artifact runs/e2e --dtype float32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_generation_vs_peft as gen_bench  # noqa: E402


def train(where: str, dtype: str) -> None:
    from prompttune.core.backbone import Backbone
    from prompttune.core.data import Dataset, from_records
    from prompttune.generation.task import GenerationTask
    from prompttune.train import TrainConfig

    backbone = Backbone.load(None, dtype=dtype)
    rows, _ = gen_bench.rows(argparse.Namespace(max_target_tokens=64, train_rows=1000, gen_rows=64), backbone.tokenizer)
    config = {"num_virtual_tokens": 10, "prefix_hidden": 512}
    task = GenerationTask.create(backbone, "prefix-tuning", config, {"user": "[soft]{{ input }}"}, seed=0)
    data = from_records(rows)
    steps = TrainConfig(
        max_steps=30,
        batch_size=16,
        lr=5e-3,
        eval_every=10**9,
        patience=10**9,
        warmup_steps=3,
        ema=0.0,
        time_budget_s=None,
    )
    task.fit(data, Dataset(data.rows[:2], data.source), steps)
    task.save(where)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", default=None, help="a generation artifact (default: train one, 30 steps)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    ap.add_argument("--drafts", default="0,2,3", help="draft_tokens settings to decode with, in order")
    ap.add_argument("--inputs", type=int, default=64)
    args = ap.parse_args()

    import torch

    from prompttune.core.backbone import set_threads
    from prompttune.core.data import from_records
    from prompttune.generation.decode import greedy_batch
    from prompttune.task import load

    set_threads()
    with tempfile.TemporaryDirectory(prefix="bench-draft-") as tmp:
        where = args.artifact or str(Path(tmp) / "e2e")
        if not args.artifact:
            print("training prefix tuning (30 steps) ...", file=sys.stderr, flush=True)
            train(where, args.dtype)
        task = load(where, dtype=args.dtype)
    backbone = task.backbone
    ns = argparse.Namespace(max_target_tokens=64, train_rows=1000, gen_rows=args.inputs)
    _, inputs = gen_bench.rows(ns, backbone.tokenizer)
    rows = task.model.encode(from_records([{"input": x} for x in inputs]).rows, targets=False)
    ids = sorted((r.ids for r in rows), key=len)
    passes = [0]
    run = backbone.run
    backbone.run = lambda *a, **k: passes.__setitem__(0, passes[0] + 1) or run(*a, **k)
    first = None
    print(f"{len(ids)} E2E inputs, 16 slots, up to 64 tokens, {args.dtype}, threads {torch.get_num_threads()}")
    print(f"{'draft_tokens':>12}{'passes':>8}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}{'identical':>11}")
    for n in (int(x) for x in args.drafts.split(",")):
        config = task.decoding.replace(
            max_new_tokens=64, repetition_penalty=1.0, no_repeat_ngram_size=0, draft_tokens=n
        )
        passes[0] = 0
        t0 = time.perf_counter()
        with torch.no_grad():
            out = greedy_batch(backbone, ids, task.model.cached_prefix() or None, task.model.row_inputs, config, 16)
        seconds = time.perf_counter() - t0
        first = first or out
        tokens = gen_bench.count_tokens(backbone.tokenizer, out)
        same = sum(a == b for a, b in zip(out, first, strict=True))
        print(f"{n:>12}{passes[0]:>8}{tokens:>8}{seconds:>9.2f}{tokens / seconds:>10.1f}{same:>8}/{len(out)}")


if __name__ == "__main__":
    main()
