"""Data-parallel training on one machine: 2 processes x 1 thread (``prompttune train --nproc 2``) against
1 process x 1 thread, the default recipe (prompt tuning, label words, batch 16) on the first SST-2 rows, the same
global batches and seed; training examples/s (validation excluded) and held-out accuracy of each.

    .venv/bin/python benchmarks/bench_ddp.py --data ../shared/data/sst2/train.jsonl \\
        [--train-rows 2000] [--max-steps 60] [--eval-rows 500] [--batch-size 16] [--model DIR]

Held-out rows are the file's last ``--eval-rows`` (never trained on; read in place, not copied). Prints one JSON
object: each run's examples/s, wall seconds, steps, accuracy, the ratio, and the machine's load before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train(data: Path, out: Path, nproc: int, args) -> dict:
    cmd = [sys.executable, "-m", "prompttune", "train", str(data), "--out", str(out), "--limit", str(args.train_rows)]
    cmd += ["--max-steps", str(args.max_steps), "--time-budget", "0", "--json", "--seed", str(args.seed)]
    cmd += ["--eval-every", str(args.eval_every)] if args.eval_every else []
    cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    cmd += ["--model", args.model] if args.model else []
    cmd += ["--nproc", str(nproc)] if nproc > 1 else []
    env = dict(os.environ, OMP_NUM_THREADS="1")  # 1 thread per process either way
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    summary = json.loads(next(x for x in res.stdout.splitlines() if x.startswith("{")))
    return {
        "processes": nproc,
        "train_examples_per_s": summary["train_examples_per_s"],
        "train_seconds": summary["train_seconds"],
        "wall_seconds": wall,
        "steps": summary["steps"],
        "best_val": summary["best_val_accuracy"],
        "load_before": load,
    }


def held_out_accuracy(artifact: Path, data: Path, n: int, model: str | None) -> float:
    import prompttune
    from prompttune.core.data import Dataset, load_rows

    rows = load_rows(data)
    held = Dataset(rows.rows[-n:], f"{data} (last {n} rows)")
    return prompttune.load(artifact, model).evaluate(held)["accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data/sst2/train.jsonl"))
    ap.add_argument("--train-rows", type=int, default=2000)
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="global batch (default: the recipe's 16)")
    ap.add_argument("--eval-rows", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="a model folder (default: the embedded default decoder)")
    args = ap.parse_args()
    n_rows = sum(1 for _ in args.data.open())
    if args.train_rows + args.eval_rows > n_rows:
        raise SystemExit(f"--train-rows + --eval-rows exceed the {n_rows} rows of {args.data}.")
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        for nproc in (1, 2):
            out = Path(tmp) / f"p{nproc}"
            run = train(args.data, out, nproc, args)
            run["held_out_accuracy"] = held_out_accuracy(out, args.data, args.eval_rows, args.model)
            runs.append(run)
    one, two = runs
    print(
        json.dumps(
            {
                "data": str(args.data),
                "train_rows": args.train_rows,
                "max_steps": args.max_steps,
                "batch_size": args.batch_size or "recipe default (16)",
                "eval_rows": args.eval_rows,
                "cpus": os.cpu_count(),
                "runs": runs,
                "examples_per_s_ratio": two["train_examples_per_s"] / one["train_examples_per_s"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
