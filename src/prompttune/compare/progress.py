"""Progress of a comparison: one bar over all runs, one for the run in progress (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from prompttune.compare.runner import Cell


class CellProgress:
    def __init__(self, console: Console, cells: list[Cell]):
        self.console = console
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.total = len(cells)
        self.all = None
        self.current = None

    def __enter__(self) -> CellProgress:
        self.bar.__enter__()
        self.all = self.bar.add_task("all runs", total=self.total, info="")
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def on_event(self, cell: Cell, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "start":
            self.current = self.bar.add_task(cell.label, total=None, info="loading")
        elif kind == "step" and self.current is not None:
            if "loss" in ev or "info" in ev:  # a training step, or a search's (compare/searched/) own line
                info = ev.get("info") or f"loss {ev['loss']:.3f}, {ev['examples_per_s']:.1f} ex/s"
                self.bar.update(self.current, completed=ev["step"], total=ev["total"], info=info)
        elif kind == "eval" and self.current is not None:
            self.bar.update(self.current, info=f"evaluating {ev['n']} rows")
        elif kind in ("done", "reused"):
            rec = ev["record"]
            if self.current is not None:
                self.bar.remove_task(self.current)
                self.current = None
            if rec["status"] == "ok":
                line = f"{cell.label}: accuracy {rec['accuracy']:.4f}" + (" (reused)" if kind == "reused" else "")
                if kind == "done":
                    line += f", {rec.get('wall_seconds', 0):.0f} s, peak RSS {rec['peak_rss_mb']:,.0f} MB"
            else:
                line = f"{escape(cell.label)}: [red]failed[/]: {escape(rec['error'])}"
            self.bar.console.print(line, highlight=False)
            self.bar.advance(self.all)
