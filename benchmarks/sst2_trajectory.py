"""What early stopping selects against what it should: the default recipe on the first 2,000 SST-2 rows, with the
held-out accuracy (the file's last 1,000 rows, read in place) recorded at every validation next to the validation
accuracy and cross-entropy, run to the end of its schedule (no patience, no time budget). The script then replays
selection rules over the recorded validations, which is exact (selection does not change the trajectory):

    .venv/bin/python benchmarks/sst2_trajectory.py [--seed 0] [--ema 0.9] [--out runs/sst2-trajectory-0.json]
    .venv/bin/python benchmarks/sst2_trajectory.py --replay runs/sst2-trajectory-0.json --seed 0  # new rules
    (--seed: the recorded run's, whose validation split scores the averaged states)

Prints one line per validation and, per rule, the step it keeps and that step's held-out accuracy. The trainer's
rule came from these runs: patience 10 (strict improvements), then the mean of the 3 best validated states, an
accuracy tie ranked by validation cross-entropy (TrainConfig.patience / average_best)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from prompttune.api import train_from_file
from prompttune.core.data import Dataset, load_rows
from prompttune.label_words import verbalizer_objective
from prompttune.train import TrainConfig


class Recorder:
    """VerbalizerObjective.validate, replaced: one pass over the validation rows gives accuracy and cross-entropy,
    and the (averaged) state validated is kept, so that the held-out rows can be scored with any of them (or an
    average of several) afterwards; ``every`` scores the held-out rows at every validation as it goes."""

    def __init__(self, held: Dataset, every: bool):
        self.held, self.every = held, every
        self.log: list[dict] = []
        self.states: list[dict] = []
        self.objective = None
        recorder = self

        @torch.no_grad()
        def validate(objective) -> float:
            recorder.objective = objective
            val = recorder.scores(objective.val.ids)
            recorder.states.append({k: v.detach().clone() for k, v in objective.trainable.trainable_state().items()})
            entry = {"val": float((val.argmax(-1) == objective.y_val).float().mean()),
                     "val_ce": float(F.cross_entropy(val, objective.y_val))}  # fmt: skip
            recorder.log.append(entry)
            if recorder.every:
                entry["held"] = recorder.held_accuracy()
            print(json.dumps(entry), flush=True)
            return entry["val"]

        verbalizer_objective.VerbalizerObjective.validate = validate

    def scores(self, ids) -> torch.Tensor:
        pm = self.objective.model
        prefix = pm.cached_prefix()
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = torch.empty(len(ids), len(pm.verbalizer.labels))
        for k in range(0, len(order), 64):
            idx = order[k : k + 64]
            out[idx] = pm.label_scores([ids[i] for i in idx], prefix).cpu()
        return out

    @torch.no_grad()
    def held_accuracy(self, state: dict | None = None) -> float:
        """Held-out accuracy of the current state, or of ``state`` loaded first."""
        pm = self.objective.model
        if state is not None:
            self.objective.trainable.load_trainable_state(state)
            self.objective.clear_cache()
        if not hasattr(self, "held_ids"):
            self.held_ids, self.held_y = pm.encode(self.held).ids, pm.label_indices(self.held)
        return float((self.scores(self.held_ids).argmax(-1) == self.held_y).float().mean())

    def held_at(self, idx: list[int]) -> float:
        """Held-out accuracy of the average of the states validated at log indices ``idx`` (one: that state)."""
        if len(idx) == 1 and "held" in self.log[idx[0]]:
            return self.log[idx[0]]["held"]
        state = {k: torch.stack([self.states[i][k] for i in idx]).mean(0) for k in self.states[idx[0]]}
        acc = self.held_accuracy(state)
        if len(idx) == 1:
            self.log[idx[0]]["held"] = acc
        return acc


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
    ap.add_argument("--every", action="store_true", help="score the held-out rows at every validation (slow)")
    ap.add_argument("--replay", type=Path, default=None, help="an earlier --out: replay the rules on its states")
    args = ap.parse_args()
    rows = load_rows(args.data)
    held = Dataset(rows.rows[-1000:], f"{args.data} (last 1,000 rows)")
    rec = Recorder(held, args.every)
    if args.replay:  # one step builds the objective; then the recorded run's log and states replace this one's
        args.max_steps, args.out = 1, None
    cfg = TrainConfig(
        epochs=args.epochs,
        max_steps=args.max_steps,
        patience=10**6,
        time_budget_s=None,
        seed=args.seed,
        ema=args.ema,
        average_best=1,  # one log entry per validation: the rules average states afterwards
    )
    _, result, _ = train_from_file(args.data, None, limit=2000, config=cfg)
    log = rec.log
    for entry, h in zip(log, result.history, strict=True):
        entry["step"] = h["step"]
    if args.replay:
        log = rec.log = json.loads(args.replay.read_text())["log"]
        flat = load_file(args.replay.with_suffix(".states.safetensors"))
        rec.states = [{} for _ in log]
        for key, value in flat.items():
            i, name = key.split("/", 1)
            rec.states[int(i)][name] = value
    rules = replay_rules(log, rec)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"seed": args.seed, "ema": args.ema, "log": log, "rules": rules}, indent=1))
        flat = {f"{i}/{k}": v.contiguous() for i, st in enumerate(rec.states) for k, v in st.items()}
        save_file(flat, args.out.with_suffix(".states.safetensors"))  # every validated state, for other rules


def replay_rules(log: list[dict], rec: Recorder) -> dict:
    # Rules with one state: the trainer's earlier and current; the lowest cross-entropy; accuracy with
    # cross-entropy breaking ties; the last state. Rules that average validated states: the k best by accuracy,
    # every state from the first best on, and from the first best to where patience 6 stops.
    picks: dict[str, list[int]] = {}
    for name, patience, ties in (("strict, patience 4", 4, False), ("ties later, patience 6", 6, True)):
        kept, stop = replay(log, patience, ties)
        picks[f"{name} (stops at {log[stop]['step']})"] = [kept]
    picks["lowest val cross-entropy"] = [min(range(len(log)), key=lambda i: log[i]["val_ce"])]
    by_acc = sorted(range(1, len(log)), key=lambda i: (-log[i]["val"], log[i]["val_ce"]))
    picks["accuracy, ties by cross-entropy"] = by_acc[:1]
    picks["last step"] = [len(log) - 1]
    for k in (3, 5):
        picks[f"average of the {k} best"] = sorted(by_acc[:k])
    first_best = max(range(len(log)), key=lambda i: (log[i]["val"], -i))
    picks["average from the first best on"] = list(range(first_best, len(log)))
    _, stop = replay(log, 6, True)
    first = max(range(stop + 1), key=lambda i: (log[i]["val"], -i))
    picks["average, first best to the stop"] = list(range(first, stop + 1))
    # Rules a trainer that stops can follow: the k best of what it validated before its patience ran out.
    for patience in (6, 10):
        _, stop = replay(log, patience, True)
        seen = sorted(range(1, stop + 1), key=lambda i: (-log[i]["val"], log[i]["val_ce"]))
        for k in (2, 3):
            picks[f"average of the {k} best to stop, patience {patience}"] = sorted(seen[:k])
            later = sorted(range(1, stop + 1), key=lambda i: (-log[i]["val"], -i))  # what the trainer can rank by
            picks[f"average of the {k} best to stop, patience {patience}, ties later"] = sorted(later[:k])
    by_ce = sorted(range(1, len(log)), key=lambda i: log[i]["val_ce"])
    picks["average of the 3 lowest cross-entropy"] = sorted(by_ce[:3])
    rules = {}
    for name, idx in picks.items():
        rules[name] = {"steps": [log[i]["step"] for i in idx], "held": rec.held_at(idx)}
        if len(idx) == 1:
            rules[name]["val"] = log[idx[0]]["val"]
        else:  # held_at left the average loaded: its own validation accuracy (a trainer could check it)
            with torch.no_grad():
                val = rec.scores(rec.objective.val.ids).argmax(-1) == rec.objective.y_val
            rules[name]["val"] = float(val.float().mean())
        print(
            f"{name:40} held-out {rules[name]['held']:.3f}  val {rules[name]['val']:.3f}  "
            f"(steps {rules[name]['steps']})",
            flush=True,
        )
    return rules


if __name__ == "__main__":
    main()
