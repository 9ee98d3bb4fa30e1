"""The training bar: the best validation it shows is the latest, also after the last step's validation."""

from __future__ import annotations

import io

from rich.console import Console

from prompttune.cli.progress import TrainingProgress, progress_bar


def test_the_bar_shows_a_new_best_as_soon_as_it_is_validated():
    console = Console(file=io.StringIO(), force_terminal=True)
    bar = progress_bar(console)
    progress = TrainingProgress(console, bar)
    progress.on_step({"step": 79, "total": 80, "loss": 0.5, "examples_per_s": 2.3})
    progress.on_validation({"step": 79, "total": 80, "metric": "accuracy", "val": 0.79, "best_val": 0.79})
    assert "best val 0.790" in bar.tasks[0].fields["info"]
    progress.on_step({"step": 80, "total": 80, "loss": 0.45, "examples_per_s": 2.3})
    progress.on_validation({"step": 80, "total": 80, "metric": "accuracy", "val": 0.89, "best_val": 0.89})
    info = bar.tasks[0].fields["info"]
    assert "best val 0.890" in info and "loss 0.450" in info and "2.3 ex/s" in info


def test_the_count_shows_no_total_while_it_is_unknown():
    from io import StringIO

    from rich.console import Console

    from prompttune.cli.progress import progress_bar

    out = StringIO()
    with progress_bar(Console(file=out, width=100)) as bar:
        task = bar.add_task("evaluating", total=None, info="")
        bar.advance(task, 5)
        bar.refresh()
        other = bar.add_task("training", total=60, info="")
        bar.update(other, completed=7)
    text = out.getvalue()
    assert "None" not in text and "7/60" in text


def test_the_start_line_names_a_few_labels_and_counts_many():
    from prompttune.cli.progress import SHOWN_LABELS, label_list

    assert label_list(["negative", "positive"]) == "['negative', 'positive']"
    many = [f"label {i}" for i in range(300)]
    line = label_list(many)
    assert line.startswith("['label 0', 'label 1'") and line.endswith("...] (300 labels)")
    assert f"'label {SHOWN_LABELS - 1}'" in line and f"'label {SHOWN_LABELS}'" not in line
