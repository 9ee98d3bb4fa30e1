"""Continual-learning figures (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018): the accuracy matrix, average
accuracy, backward and forward transfer, and their report as JSON, Markdown and a PNG plot."""

from __future__ import annotations

import io
import json
from pathlib import Path


def continual_metrics(matrix: list[list[float | None]], before: list[float], baseline: list[float]) -> dict:
    """``matrix[j][i]``: accuracy on task i after learning tasks 0..j (None where i > j); ``before[i]``: on task i
    just before learning it (after tasks < i); ``baseline[i]``: a fresh prompt of task i alone.

    average accuracy = mean_i R[T-1][i]; BWT = mean_{i<T-1} (R[T-1][i] - R[i][i]) (negative: forgetting);
    FWT = mean_{i>0} (before[i] - baseline[i]) (what earlier tasks give a task before it is learned).
    """
    t = len(matrix)
    last = matrix[-1]
    avg = sum(last) / t
    bwt = sum(last[i] - matrix[i][i] for i in range(t - 1)) / (t - 1) if t > 1 else None
    fwt = sum(before[i] - baseline[i] for i in range(1, t)) / (t - 1) if t > 1 else None
    return {"average_accuracy": avg, "bwt": bwt, "fwt": fwt}


def markdown(report: dict) -> str:
    names = report["tasks"]
    lines = [
        f"# Continual learning: {report['method']}",
        "",
        f"{len(names)} tasks in this order: {', '.join(names)}. Accuracy on each task's held-out rows "
        "(row: after learning that task; column: the task evaluated).",
        "",
        "| after \\ on | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for name, row in zip(names, report["matrix"], strict=True):
        lines.append(f"| {name} | " + " | ".join("" if v is None else f"{v:.4f}" for v in row) + " |")
    fmt = lambda v: "n/a (one task)" if v is None else f"{v:+.4f}"  # noqa: E731
    lines += [
        "",
        f"- average accuracy after the last task: {report['average_accuracy']:.4f}",
        f"- backward transfer (BWT): {fmt(report['bwt'])}",
        f"- forward transfer (FWT): {fmt(report['fwt'])}",
        "- before learning each task: "
        + ", ".join(f"{n} {v:.4f}" for n, v in zip(names, report["before"], strict=True)),
        "- a fresh prompt of each task alone: "
        + ", ".join(f"{n} {v:.4f}" for n, v in zip(names, report["baseline"], strict=True)),
        "",
        "![accuracy after each task](report.png)",
    ]
    return "\n".join(lines) + "\n"


def plot_png(report: dict) -> bytes:
    """Accuracy on each task (a line per task) after each task is learned, and the average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, matrix = report["tasks"], report["matrix"]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    x = list(range(1, len(names) + 1))
    for i, name in enumerate(names):
        ax.plot(x[i:], [matrix[j][i] for j in range(i, len(names))], marker="o", label=name)
    avg = [sum(matrix[j][: j + 1]) / (j + 1) for j in range(len(names))]
    ax.plot(x, avg, color="black", linestyle="--", label="average so far")
    ax.set_xticks(x, [f"after {n}" for n in names], rotation=30, ha="right")
    ax.set(
        ylabel="held-out accuracy",
        title=f"{report['method']}: BWT {report['bwt'] if report['bwt'] is not None else 0:+.3f}",
    )
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_report(folder: Path, report: dict) -> None:
    """report.json, report.md and report.png in ``folder`` (a folder being built: the caller swaps it in)."""
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(markdown(report), encoding="utf-8")
    (folder / "report.png").write_bytes(plot_png(report))
