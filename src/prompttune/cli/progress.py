"""Progress display: a rich bar, and the training callback that draws it (one line per validation in logs)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from prompttune.train import Callback

SHOWN_LABELS = 12  # a start line names at most this many labels


def label_list(labels: list) -> str:
    """The labels for a one-line summary: all of a few, else the first ``SHOWN_LABELS`` and how many in all."""
    if len(labels) <= SHOWN_LABELS:
        return str(list(labels))
    shown = ", ".join(repr(x) for x in labels[:SHOWN_LABELS])
    return f"[{shown}, ...] ({len(labels)} labels)"


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        _Count(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class _Count(ProgressColumn):
    """``done/total``, or ``done`` alone while the total is not known (not ``5/None``)."""

    def render(self, task) -> Text:
        done = int(task.completed)
        return Text(f"{done}/{int(task.total)}" if task.total is not None else str(done))


class TrainingProgress(Callback):
    """A bar with step, loss, examples/s and the best validation so far; in logs (no terminal), one line per
    validation instead."""

    def __init__(self, console: Console, bar: Progress | None = None):
        super().__init__()
        self.console, self.bar, self.task = console, None, None
        self.best: float | None = None
        self.speed = ""
        self.shown = ""  # the bar's loss and speed, as of the last step
        if bar is not None:
            self.attach(bar)

    def attach(self, bar: Progress) -> None:
        self.bar, self.task = bar, bar.add_task("training", total=None, info="")

    def on_step(self, ev: dict) -> None:
        loss = f"loss {ev['loss']:.3f} " if ev.get("loss") is not None else ""  # none: a probe reading features
        self.speed = f"{ev['examples_per_s']:.1f} ex/s" + (f", {loss.strip()}" if loss else "")
        if self.bar is None:
            return
        self.shown = f"{loss}{ev['examples_per_s']:.1f} ex/s"
        self.bar.update(self.task, completed=ev["step"], total=ev["total"], info=self.shown + self._best())

    def _best(self) -> str:
        return f" best val {self.best:.3f}" if self.best is not None else ""

    def on_validation(self, ev: dict) -> None:
        self.best = ev["best_val"]
        if self.bar is not None:  # the bar shows the new best now, not at the next step (the last has none)
            self.bar.update(self.task, info=self.shown + self._best())
        if self.bar is None or not self.console.is_terminal:
            self.console.print(
                f"step {ev['step']}/{ev['total']} val {ev['metric']} {ev['val']:.4f} "
                f"(best {ev['best_val']:.4f}) {self.speed}",
                highlight=False,
            )
