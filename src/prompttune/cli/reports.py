"""How reports and predictions read in a terminal: accuracy tables, entity F1, QA EM/F1, generation BLEU /
ROUGE-L / EM / F1, one line a prediction."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def show_report(console: Console, report: dict) -> None:
    if "bleu" in report:  # generation: text against every reference of an input
        console.print(
            f"BLEU {report['bleu']:.2f}  ROUGE-L {report['rougeL']:.2f}  exact match {report['exact_match']:.2f}  "
            f"F1 {report['f1']:.2f} on {report['n']} inputs ({report['n_references']} references; "
            f"{report['examples_per_s']:.2f} inputs/s, {report['tokens_per_s']:.1f} tokens/s)",
            highlight=False,
        )
        for sample in report.get("samples", []):
            console.print(f"  {sample['input']}", markup=False, highlight=False)
            line = f"    -> {sample['output']!r}  | reference {sample['reference']!r}"
            console.print(line, markup=False, highlight=False)
        return
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
    line = calibration_line(report.get("calibration"))
    if line:
        console.print(line, markup=False, highlight=False)


def calibration_line(cal: dict | None) -> str | None:
    """How a hard prompt's calibration was chosen, and on which rows (None for artifacts)."""
    if not cal:
        return None
    if cal["mode"] != "auto":
        return f"calibration: {cal['mode']} (--calibrate / --no-calibrate)"
    verdict = "applied" if cal["applied"] else "not applied"
    if "check_accuracy_calibrated" not in cal:
        return f"calibration (auto): {verdict}; no check rows: {cal['check_source']}"
    return (
        f"calibration (auto): {verdict}: on {cal['check_rows']} check rows, accuracy "
        f"{cal['check_accuracy_calibrated']:.3f} calibrated vs {cal['check_accuracy_uncalibrated']:.3f} without. "
        f"Check rows: {cal['check_source']}."
    )


def show_warnings(console: Console, report: dict) -> None:
    """Warnings about a report (on stderr): predictions that are nearly all one label."""
    from prompttune.core.metrics import one_label_warning

    text = one_label_warning(report)
    if text:
        console.print(f"warning: {text}", markup=False, highlight=False)


def format_prediction(record: dict) -> str:
    if "entities" in record:
        ents = ", ".join(f"{e['text']} ({e['type']})" for e in record["entities"]) or "no entities"
        return f"{ents}  | {record['input'][:70]}"
    if "answer" in record:
        return f"{record['answer']!r}  | {record['input'][:70]}"
    scores = "  ".join(f"{k}={v:.3f}" for k, v in record["scores"].items())
    return f"{record['label']:<12} {scores}  | {record['input'][:70]}"
