"""Several label-word templates scored as one: compare's cell scores an optimized ensemble like any task.

An optimizer with ``ensemble`` above 1 keeps several one-step programs whose label scores are averaged
(programs/ensemble.py, ``mean``). Each member is written as a template (programs/export.py) with its own
calibration; here every member scores the test rows (label log-probabilities, normalized over the labels and
calibrated as that member is), the scores are summed, and the best label wins: the rule the program follows.
The cell reads what it reads of a task: ``trainable_params``, ``evaluate`` and ``stored_bytes``.
"""

from __future__ import annotations

import time

from prompttune.core.errors import DataError
from prompttune.core.metrics import classification_report
from prompttune.prompt_task import PromptTask
from prompttune.task import Data, as_dataset


class EnsembleTask:
    """Member tasks (the same labels, each with its template and calibration) whose label scores add up."""

    trainable_params = 0  # readable prompts: nothing trained

    def __init__(self, members: list[PromptTask]):
        labels = members[0].labels
        for i, m in enumerate(members[1:], start=2):
            if m.labels != labels:
                raise DataError(f"ensemble member {i} has labels {m.labels}; member 1 has {labels}.")
        self.members = list(members)
        self.labels = labels

    def evaluate(self, data: Data, batch_size: int = 32, calibrate: bool = True) -> dict:
        """Accuracy, per-class figures and speed of the members' summed label scores on labelled rows."""
        ds = as_dataset(data)
        gold = self.members[0].model.label_indices(ds)
        encoded = [m.model.encode(ds) for m in self.members]
        for m in self.members:
            m.model.cached_prefix()  # computed once, not counted as per-example time (as PromptTask.evaluate)
        t0 = time.perf_counter()
        scores = [m.model.score(e, batch_size, calibrate) for m, e in zip(self.members, encoded, strict=True)]
        total = sum(scores)
        seconds = time.perf_counter() - t0
        report = classification_report(total.argmax(-1), gold, self.labels)
        report["examples_per_s"] = len(ds) / seconds if seconds else 0.0
        report["eval_seconds"] = seconds
        return report
