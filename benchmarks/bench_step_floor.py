"""What caps data-parallel speed-up on this machine: the part of a training step that does not shrink with its rows.

Two ranks at a global batch of B each run steps of B/2 rows, so with a step taking T(n) = F + n r (F: the fixed
part, r: each row's share) the speed-up over one process is at most T(B) / T(B/2) (no communication at all).
This benchmark measures, in one process with 1 thread, on the default decoder and the default recipe's pass
(prompt tuning, label words):

1. the step time at 1, B/2 and B rows (the same length-bucketed SST-2 rows the recipe draws), and F and r fitted
   to them, hence the cap T(B) / T(B/2) and the largest F that would allow ``--target`` (1.7x by default);
2. the floor under F: every projection of the decoder's layers (the real frozen weights) run once forward
   (``x @ W.T``) and once backward (``g @ W``, the input's gradient) at a step's few dozen tokens, i.e. the
   weights streamed from memory twice, which every rank pays whatever its rows; and the same with the weights
   pre-packed for oneDNN (``torch.ops.mkldnn._linear_pointwise``), the fastest kernel layout measured here;
3. hence how much of the fixed part the rest of a step (attention, norms, element-wise work, operator calls) takes
   now, and how much it could take if the target were to be met with the best kernel measured.

    .venv/bin/python benchmarks/bench_step_floor.py [--data ../shared/data/sst2/train.jsonl] [--batch-size 16]
        [--tokens 32] [--target 1.7]

Prints one JSON object. Nothing is written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def step_times(bb, data: Path, sizes: list[int], repeats: int) -> dict[int, float]:
    from prompttune.core.data import load_rows
    from prompttune.label_words.verbalizer_objective import VerbalizerObjective
    from prompttune.prompt_task import PromptTask

    rows = load_rows(data).limit(2000)
    task = PromptTask.for_data(bb, rows)
    obj = VerbalizerObjective(task.model, rows, rows.limit(50))
    order = sorted(range(len(rows)), key=lambda i: obj.lengths[i])  # the recipe buckets rows by length
    params = list(task.model.method.parameters())

    def step(batch: list[int]) -> float:
        t0 = time.perf_counter()
        obj.batch_loss(batch).backward()
        for p in params:
            p.grad = None
        return time.perf_counter() - t0

    out = {}
    mid = len(order) // 2  # rows of the median length
    for n in sizes:
        batches = [order[mid + k * n : mid + (k + 1) * n] for k in range(repeats + 1)]
        step(batches[0])  # warm-up (kernel builds for new shapes)
        out[n] = statistics.median(step(b) for b in batches[1:]) * 1e3
    return out


def weight_floor(model, tokens: int, repeats: int) -> dict[str, float]:
    """ms to stream every decoder projection forward and backward at `tokens` rows: plain and pre-packed."""
    weights = [m.weight for layer in model.model.layers for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    xs = {w.shape[1]: torch.randn(tokens, w.shape[1], dtype=w.dtype) for w in weights}
    gs = {w.shape[0]: torch.randn(tokens, w.shape[0], dtype=w.dtype) for w in weights}

    def timed(fn) -> float:
        fn()
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs) * 1e3

    res = {
        "projections": len(weights),
        "weight_mb": sum(w.numel() * w.element_size() for w in weights) / 2**20,
        "forward_ms": timed(lambda: [F.linear(xs[w.shape[1]], w) for w in weights]),
        "backward_ms": timed(lambda: [gs[w.shape[0]] @ w for w in weights]),
    }
    try:
        fwd = [torch.ops.mkldnn._reorder_linear_weight(w, tokens) for w in weights]
        bwd = [torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), tokens) for w in weights]
        lin = torch.ops.mkldnn._linear_pointwise
        pairs_f, pairs_b = list(zip(weights, fwd, strict=True)), list(zip(weights, bwd, strict=True))
        res["packed_forward_ms"] = timed(lambda: [lin(xs[w.shape[1]], p, None, "none", [], "") for w, p in pairs_f])
        res["packed_backward_ms"] = timed(lambda: [lin(gs[w.shape[0]], p, None, "none", [], "") for w, p in pairs_b])
    except (RuntimeError, AttributeError) as e:  # a build without oneDNN's packed linear
        res["packed_error"] = str(e)[:200]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/sst2/train.jsonl"))
    ap.add_argument("--batch-size", type=int, default=16, help="the global batch (two ranks get half each)")
    ap.add_argument("--tokens", type=int, default=32, help="tokens of a few-row step, for the weight floor")
    ap.add_argument("--target", type=float, default=1.7, help="the speed-up to test against")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"--data {args.data}: missing (see ../shared/data/README.md)")
    if args.batch_size < 2 or args.batch_size % 2:
        sys.exit(f"--batch-size {args.batch_size}: give an even number of rows, 2 or more")
    torch.set_num_threads(1)  # as each rank of `--nproc 2` on 2 cores, and the 1-process baseline
    half, full = args.batch_size // 2, args.batch_size
    from prompttune.core.backbone import Backbone

    bb = Backbone.load(None, dtype="auto")  # one load for both measurements
    t = step_times(bb, args.data, [1, half, full], args.repeats)
    # least squares over the three sizes: T(n) = F + n r
    ns = list(t)
    n_mean, t_mean = statistics.mean(ns), statistics.mean(t.values())
    r = sum((n - n_mean) * (t[n] - t_mean) for n in ns) / sum((n - n_mean) ** 2 for n in ns)
    fixed = t_mean - r * n_mean
    # (F + B r) / (F + B/2 r) >= target  <=>  F <= B r (1 - target/2) / (target - 1)
    fixed_allowed = full * r * (1 - args.target / 2) / (args.target - 1)
    floor = weight_floor(bb.model, args.tokens, args.repeats)
    best = min(
        floor["forward_ms"] + floor["backward_ms"],
        floor.get("packed_forward_ms", float("inf")) + floor.get("packed_backward_ms", float("inf")),
    )
    print(
        json.dumps(
            {
                "threads": 1,
                "step_ms": {str(n): round(v, 1) for n, v in t.items()},
                "fitted_fixed_ms": round(fixed, 1),
                "fitted_ms_per_row": round(r, 1),
                "cap_two_ranks": round(t[full] / t[half], 3),
                "target": args.target,
                "fixed_ms_allowed_for_target": round(fixed_allowed, 1),
                "weight_stream": {k: round(v, 1) if isinstance(v, float) else v for k, v in floor.items()},
                "weight_stream_best_ms": round(best, 1),
                # what the rest of the fixed part (attention, norms, element-wise work, operator calls) takes now
                # with the shipped kernels, and what it could take at the target with the best kernel measured
                "fixed_besides_weights_ms_now": round(fixed - floor["forward_ms"] - floor["backward_ms"], 1),
                "fixed_besides_weights_ms_allowed": round(fixed_allowed - best, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
