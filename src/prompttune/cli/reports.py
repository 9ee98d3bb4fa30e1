"""How reports and predictions read in a terminal: accuracy tables, entity F1, QA EM/F1, one line a prediction."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def show_report(console: Console, report: dict) -> None:
    if "exact_match" in report:
        console.print(
            f"exact match {report['exact_match']:.2f}  F1 {report['f1']:.2f} on {report['n']} questions "
            f"({report['examples_per_s']:.1f} questions/s)"
        )
        return
    if "accuracy" not in report:  # tagging: entity figures
        console.print(
            f"entity F1 {report['f1']:.4f} (precision {report['precision']:.4f}, recall {report['recall']:.4f}) "
            f"on {report['n']} rows ({report['examples_per_s']:.1f} rows/s)"
        )
        table = Table("type", "precision", "recall", "f1", "support")
        for name, m in report["per_type"].items():
            table.add_row(name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
        console.print(table)
        return
    console.print(
        f"accuracy {report['accuracy']:.4f} on {report['n']} rows "
        f"(macro F1 {report['macro_f1']:.4f}, {report['examples_per_s']:.1f} examples/s)"
    )
    table = Table("label", "precision", "recall", "f1", "support")
    for label, m in report["per_class"].items():
        table.add_row(label, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    console.print(table)


def format_prediction(record: dict) -> str:
    if "entities" in record:
        ents = ", ".join(f"{e['text']} ({e['type']})" for e in record["entities"]) or "no entities"
        return f"{ents}  | {record['input'][:70]}"
    if "answer" in record:
        return f"{record['answer']!r}  | {record['input'][:70]}"
    scores = "  ".join(f"{k}={v:.3f}" for k, v in record["scores"].items())
    return f"{record['label']:<12} {scores}  | {record['input'][:70]}"
