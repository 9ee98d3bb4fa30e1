"""Classification metrics: accuracy, per-class precision/recall/F1, macro F1, confusion counts."""

from __future__ import annotations

import torch


def classification_report(pred: torch.Tensor, gold: torch.Tensor, labels: list[str]) -> dict:
    n = len(gold)
    out: dict = {"accuracy": float((pred == gold).float().mean()) if n else 0.0, "n": n, "per_class": {}}
    f1s = []
    for i, label in enumerate(labels):
        tp = int(((pred == i) & (gold == i)).sum())
        fp = int(((pred == i) & (gold != i)).sum())
        fn = int(((pred != i) & (gold == i)).sum())
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        f1s.append(f1)
        out["per_class"][label] = {"precision": p, "recall": r, "f1": f1, "support": tp + fn}
    out["macro_f1"] = sum(f1s) / len(f1s) if f1s else 0.0
    out["confusion"] = {
        g: {p: int(((gold == gi) & (pred == pi)).sum()) for pi, p in enumerate(labels)} for gi, g in enumerate(labels)
    }
    return out
