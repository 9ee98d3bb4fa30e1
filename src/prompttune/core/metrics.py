"""Classification metrics: accuracy, per-class precision/recall/F1, macro F1, confusion counts, and a check
for a prompt that gives (nearly) every row one label."""

from __future__ import annotations

import torch

# A report flags a prompt whose predictions are nearly all one label: at least this share of the rows, on at
# least ONE_LABEL_MIN_ROWS rows, for a label the gold rows do not hold at that share themselves.
ONE_LABEL_SHARE = 0.9
ONE_LABEL_MIN_ROWS = 20


def classification_report(pred: torch.Tensor, gold: torch.Tensor, labels: list[str]) -> dict:
    n = len(gold)
    out: dict = {"accuracy": int((pred == gold).sum()) / n if n else 0.0, "n": n, "per_class": {}}
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
    out["predicted_share"] = {label: int((pred == i).sum()) / n if n else 0.0 for i, label in enumerate(labels)}
    out["one_label"] = one_label(pred, gold, labels)
    return out


def one_label(pred: torch.Tensor, gold: torch.Tensor, labels: list[str]) -> dict | None:
    """The label nearly every row was given, with its share of predictions and of gold rows; None if none.

    A prompt that answers one label for (nearly) every row has not told the labels apart, whatever its
    accuracy: on data where that label is the majority its accuracy looks like a result but is the base rate.
    """
    n = len(pred)
    if n < ONE_LABEL_MIN_ROWS or not labels:
        return None
    counts = torch.bincount(pred, minlength=len(labels))
    top = int(counts.argmax())
    share = int(counts[top]) / n
    gold_share = int((gold == top).sum()) / n
    if share < ONE_LABEL_SHARE or gold_share >= ONE_LABEL_SHARE:
        return None
    return {"label": labels[top], "count": int(counts[top]), "share": share, "gold_share": gold_share}


def one_label_warning(report: dict) -> str | None:
    """The warning line for a report whose predictions are nearly all one label (None when they are not)."""
    flag = report.get("one_label")
    if not flag:
        return None
    return (
        f"{flag['count']} of {report['n']} predictions ({flag['share']:.0%}) are {flag['label']!r} "
        f"(the gold rows: {flag['gold_share']:.0%}): the prompt is not telling the labels apart, so the accuracy "
        "is close to the share of that label. Try other label words (--verbalizer), another template, "
        "demos, or calibration."
    )
