"""Turn cell records into the comparison: a ranked table, accuracy curves, data advantage; as JSON,
Markdown, and one self-contained HTML file (plots inlined as base64 PNG)."""

from __future__ import annotations

import base64
import html
import io
import statistics
from pathlib import Path

from prompttune.compare.worth import Curve, advantage, constant_worth, describe
from prompttune.core import atomic


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarize(records: list[dict], arm_names: list[str], reference: str | None) -> dict:
    """The per-method table (at the largest training size), the curves, and each method's data advantage."""
    by_arm: dict[str, list[dict]] = {name: [] for name in arm_names}
    for r in records:
        by_arm[r["arm"]["name"]].append(r)
    sizes = sorted({r["train_size"] for r in records if r["train_size"] is not None})
    top = sizes[-1] if sizes else None
    table, curves = [], {}
    for name, recs in by_arm.items():
        arm = recs[0]["arm"]
        ok = [r for r in recs if r["status"] == "ok"]
        failed = [r for r in recs if r["status"] != "ok"]
        at_top = [r for r in ok if r["train_size"] in (top, None)]
        accs = [r["accuracy"] for r in at_top]
        row = {
            "method": name,
            "kind": arm["kind"],
            "status": "ok" if at_top and not failed else ("partly failed" if at_top else "failed"),
            "accuracy_mean": _mean(accs),
            "accuracy_std": _std(accs),
            "runs": len(at_top),
            "train_rows": at_top[0]["n_train"] if at_top and arm["uses_data"] else 0 if at_top else None,
            "trainable_params": at_top[0]["trainable_params"] if at_top else None,
            "stored_bytes": at_top[0]["stored_bytes"] if at_top else None,
            "train_seconds": _mean([r.get("train_seconds") for r in at_top]),
            "model_calls": _mean([r.get("model_calls") for r in at_top]),  # searched arms' LM calls (optimized)
            "train_examples_per_s": _mean([r.get("train_examples_per_s") for r in at_top]),
            "eval_examples_per_s": _mean([r.get("eval_examples_per_s") for r in at_top]),
            "cell_seconds": _mean([r.get("wall_seconds") for r in at_top]),
            "peak_rss_mb": max((r["peak_rss_mb"] for r in at_top), default=None),
            "errors": sorted({r["error"] for r in failed}),
        }
        table.append(row)
        points = []
        for n in sizes if arm["uses_data"] else []:
            a = [r["accuracy"] for r in ok if r["train_size"] == n]
            if a:
                points.append({"train_size": n, "accuracy_mean": _mean(a), "accuracy_std": _std(a), "runs": len(a)})
        curves[name] = points
    table.sort(key=lambda r: (r["accuracy_mean"] is None, -(r["accuracy_mean"] or 0)))
    for rank, row in enumerate(table, start=1):
        row["rank"] = rank if row["accuracy_mean"] is not None else None
    return {"methods": table, "curves": curves, "worth": worth_table(table, curves, reference), "train_sizes": sizes}


def worth_table(table: list[dict], curves: dict, reference: str | None) -> dict | None:
    ref_points = curves.get(reference or "", [])
    if not reference or len(ref_points) < 2:
        return None
    ref = Curve([p["train_size"] for p in ref_points], [p["accuracy_mean"] for p in ref_points])
    entries = {}
    for row in table:
        name = row["method"]
        if name == reference or row["accuracy_mean"] is None:
            continue
        points = curves.get(name, [])
        if len(points) >= 2:
            entry = advantage(Curve([p["train_size"] for p in points], [p["accuracy_mean"] for p in points]), ref)
        elif not points:  # data-independent: a flat line
            entry = constant_worth(row["accuracy_mean"], ref)
        else:
            entry = None
        if entry is not None:
            entry["text"] = describe(entry)
            entries[name] = entry
    return {"reference": reference, "methods": entries}


# --- rendering ----------------------------------------------------------------------------------
def _fmt(x, spec: str = ".3f", none: str = "—") -> str:
    return none if x is None else format(x, spec)


def _bytes(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


COLUMNS = [
    ("rank", lambda r: _fmt(r["rank"], "d")),
    ("method", lambda r: r["method"]),
    ("kind", lambda r: r["kind"]),
    ("accuracy", lambda r: f"{_fmt(r['accuracy_mean'])} ± {_fmt(r['accuracy_std'])} ({r['runs']})"),
    ("train rows", lambda r: _fmt(r["train_rows"], ",d")),
    ("trainable params", lambda r: _fmt(r["trainable_params"], ",d")),
    ("stored / task", lambda r: _bytes(r["stored_bytes"])),
    ("train s", lambda r: _fmt(r["train_seconds"], ".0f")),
    ("model calls", lambda r: _fmt(r.get("model_calls"), ",.0f")),
    ("train ex/s", lambda r: _fmt(r["train_examples_per_s"], ".1f")),
    ("eval ex/s", lambda r: _fmt(r["eval_examples_per_s"], ".1f")),
    ("peak RSS", lambda r: _fmt(r["peak_rss_mb"], ",.0f") + " MB" if r["peak_rss_mb"] else "—"),
    ("status", lambda r: r["status"] + (f": {r['errors'][0]}" if r["errors"] else "")),
]


def column_names(summary: dict) -> list[str]:
    """The columns' titles: the score column is named after the metric (generation: BLEU, ROUGE-L ...)."""
    label = summary.get("metric_label")
    return [label if label and c == "accuracy" else c for c, _ in COLUMNS]


def markdown(summary: dict, header: str) -> str:
    lines = [header, "", "| " + " | ".join(column_names(summary)) + " |", "|" + "---|" * len(COLUMNS)]
    for row in summary["methods"]:
        lines.append("| " + " | ".join(f(row).replace("|", "\\|") for _, f in COLUMNS) + " |")
    sizes = summary["train_sizes"]
    if len(sizes) > 1:
        lines += ["", "Accuracy by training rows (mean ± std over seeds):", ""]
        lines += ["| method | " + " | ".join(str(n) for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
        for name, points in summary["curves"].items():
            if points:
                at = {p["train_size"]: p for p in points}
                cells = [
                    f"{at[n]['accuracy_mean']:.3f} ± {at[n]['accuracy_std']:.3f}" if n in at else "—" for n in sizes
                ]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    worth = summary.get("worth")
    if worth and worth["methods"]:
        lines += ["", f"Data advantage over {worth['reference']} (Le Scao & Rush 2021):", ""]
        lines += ["| method | advantage |", "|---|---|"]
        lines += [f"| {name} | {e['text']} |" for name, e in worth["methods"].items()]
    return "\n".join(lines) + "\n"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(summary: dict) -> list[tuple[str, str]]:
    """(title, base64 PNG) for accuracy vs trainable parameters, accuracy vs training rows, and cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["methods"] if r["accuracy_mean"] is not None]
    out = []
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for r in rows:
        # a legend, not labels at the points: methods of similar size and accuracy would overprint each other
        ax.errorbar(
            r["trainable_params"], r["accuracy_mean"], yerr=r["accuracy_std"], fmt="o", capsize=3, label=r["method"]
        )
    ax.set_xscale("symlog", linthresh=1)
    ax.set(xlabel="trainable parameters (0: hard prompt)", ylabel="test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    out.append(("Accuracy vs trainable parameters", _png(fig)))
    plt.close(fig)

    if len(summary["train_sizes"]) > 1:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        flat_styles = iter([("--", "gray"), (":", "black"), ("-.", "gray"), ("--", "black")] * len(rows))
        for r in rows:
            points = summary["curves"].get(r["method"], [])
            if points:
                xs = [p["train_size"] for p in points]
                ys = [p["accuracy_mean"] for p in points]
                ax.errorbar(xs, ys, yerr=[p["accuracy_std"] for p in points], marker="o", capsize=3, label=r["method"])
            else:
                style, color = next(flat_styles)  # hard prompts: flat lines, told apart by style
                ax.axhline(
                    r["accuracy_mean"],
                    linestyle=style,
                    color=color,
                    linewidth=1.2,
                    label=f"{r['method']} (no training)",
                )
        ax.set_xscale("log")
        ax.set_xticks(summary["train_sizes"], [str(n) for n in summary["train_sizes"]])
        ax.minorticks_off()
        ax.set(xlabel="training rows", ylabel="test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out.append(("Accuracy vs training rows", _png(fig)))
        plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 0.5 * len(rows) + 1.5))
    names = [r["method"] for r in rows]
    a1.barh(names, [r["cell_seconds"] or 0 for r in rows], color="tab:blue")
    a1.set(xlabel="seconds per run (load, train, evaluate)")
    a2.barh(names, [r["peak_rss_mb"] or 0 for r in rows], color="tab:orange")
    a2.set(xlabel="peak RSS (MB)")
    a2.set_yticklabels([])
    for a in (a1, a2):
        a.invert_yaxis()
        a.grid(axis="x", alpha=0.3)
    out.append(("Cost per method", _png(fig)))
    plt.close(fig)
    return out


def html_report(summary: dict, header: str, images: list[tuple[str, str]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in column_names(summary))
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(f(row))}</td>" for _, f in COLUMNS) + "</tr>" for row in summary["methods"]
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>prompttune compare</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f3f3f3}</style></head><body>",
        "<h1>prompttune compare</h1>",
        f"<pre>{esc(header)}</pre>",
        f"<table id='methods'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>",
    ]
    worth = summary.get("worth")
    if worth and worth["methods"]:
        items = "".join(f"<li><b>{esc(n)}</b>: {esc(e['text'])}</li>" for n, e in worth["methods"].items())
        parts.append(
            f"<h2>Data advantage over {esc(worth['reference'])} (Le Scao &amp; Rush 2021)</h2><ul>{items}</ul>"
        )
    for title, b64 in images:
        parts.append(f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='data:image/png;base64,{b64}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(out: Path, summary: dict, header: str, payload: dict) -> dict[str, Path]:
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    atomic.write_json(paths["json"], {**payload, **summary})
    atomic.write_text(paths["md"], markdown(summary, header))
    atomic.write_text(paths["html"], html_report(summary, header, plots(summary)))
    return paths
