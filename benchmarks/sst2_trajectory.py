"""What early stopping selects against what it should: the default recipe on the first 2,000 SST-2 rows, with the
held-out accuracy (the file's last 1,000 rows, read in place) recorded at every validation next to the validation
accuracy and cross-entropy, run to the end of its schedule (no patience, no time budget). The script then replays
selection rules over the recorded validations, which is exact (selection does not change the trajectory):

    .venv/bin/python benchmarks/sst2_trajectory.py [--seed 0] [--ema 0.9] [--out runs/sst2-trajectory-0.json]

Prints one line per validation and, per rule, the step it keeps and that step's held-out accuracy. The trainer's
rule (a tie keeps the later state; patience counts strict improvements, 6 by default) came from these runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from prompttune import verbalizer_objective
from prompttune.api import train_from_file
from prompttune.core.data import Dataset, load_rows
from prompttune.train import TrainConfig


def record(held: Dataset, log: list[dict]):
    """VerbalizerObjective.validate, replaced: one pass over the validation rows gives accuracy and cross-entropy,
    and the held-out rows are scored with the same (averaged) prompt."""
    encoded = {}

    @torch.no_grad()
    def validate(self) -> float:
        pm = self.model
        if not encoded:
            encoded["h"], encoded["y"] = pm.encode(held), pm.label_indices(held)
        prefix = pm.cached_prefix()

        def scores(ids):
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
            out = torch.empty(len(ids), len(pm.verbalizer.labels))
            for k in range(0, len(order), 64):
                idx = order[k : k + 64]
                out[idx] = pm.label_scores([ids[i] for i in idx], prefix).cpu()
            return out

        val_scores, held_scores = scores(self.val.ids), scores(encoded["h"].ids)
        acc = float((val_scores.argmax(-1) == self.y_val).float().mean())
        log.append({
            "val": acc,
            "val_ce": float(F.cross_entropy(val_scores, self.y_val)),
            "held": float((held_scores.argmax(-1) == encoded["y"]).float().mean()),
        })  # fmt: skip
        print(json.dumps(log[-1]), flush=True)
        return acc

    verbalizer_objective.VerbalizerObjective.validate = validate


def replay(log: list[dict], patience: int, ties_later: bool) -> tuple[int, int]:
    """(kept, stopped): indices into log of the state a rule keeps and the validation it stops at."""
    best, kept, bad = log[0]["val"], 0, 0
    for i, entry in enumerate(log[1:], 1):
        bad = 0 if entry["val"] > best else bad + 1
        if entry["val"] > best or (ties_later and entry["val"] == best):
            best, kept = entry["val"], i
        if bad >= patience:
            return kept, i
    return kept, len(log) - 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data/sst2/train.jsonl"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ema", type=float, default=0.9)
    ap.add_argument("--epochs", type=int, default=5, help="the CLI recipe's 5")
    ap.add_argument("--max-steps", type=int, default=None, help="a shorter run (a smoke test of the script)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = load_rows(args.data)
    held = Dataset(rows.rows[-1000:], f"{args.data} (last 1,000 rows)")
    log: list[dict] = []
    record(held, log)
    cfg = TrainConfig(
        epochs=args.epochs, max_steps=args.max_steps, patience=10**6, time_budget_s=None, seed=args.seed, ema=args.ema
    )
    _, result, _ = train_from_file(args.data, None, limit=2000, config=cfg)
    for entry, h in zip(log, result.history, strict=True):
        entry["step"] = h["step"]
    rules = {}
    for name, patience, ties in (("strict, patience 4", 4, False), ("ties later, patience 6", 6, True)):
        kept, stop = replay(log, patience, ties)
        rules[name] = {"kept_step": log[kept]["step"], "held": log[kept]["held"], "stopped_at": log[stop]["step"]}
        kept_at, held_acc, stop_at = log[kept]["step"], log[kept]["held"], log[stop]["step"]
        print(f"{name:24} keeps step {kept_at:4} (held-out {held_acc:.3f}), stops at {stop_at}")
    print(f"{'last step':24} held-out {log[-1]['held']:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"seed": args.seed, "ema": args.ema, "log": log, "rules": rules}, indent=1))


if __name__ == "__main__":
    main()
