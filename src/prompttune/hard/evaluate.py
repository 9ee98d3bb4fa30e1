"""Scoring a hard prompt (a template) on labelled rows.

A hard prompt (a template) is scored exactly like a soft prompt: the same verbalizer read-out over the
backbone, the same metrics; it runs through the zero-shot method (its soft slots left out), with
optional few-shot demos (fixed, seeded random, or nearest neighbours) and contextual calibration.
"""

from __future__ import annotations

import time

import torch

from prompttune.core.backbone import Backbone
from prompttune.core.data import Dataset, check_fields
from prompttune.core.errors import PromptTuneError
from prompttune.core.metrics import classification_report
from prompttune.core.template import Template
from prompttune.core.verbalizer import Verbalizer
from prompttune.hard.fewshot import SELECTORS, Embed, NearestDemos, select
from prompttune.prompt_task import PromptTask


def evaluate_template(
    template: Template,
    rows: Dataset,
    backbone: Backbone,
    batch_size: int = 32,
    calibrate: bool = False,
    demos: int = 0,
    demo_selector: str = "random",
    demos_from: Dataset | None = None,
    verbalizer: str | Verbalizer | None = None,
    seed: int = 0,
    embed: Embed | None = None,
) -> dict:
    """Accuracy and per-class figures of a hard prompt on labelled rows (same metrics as an artifact's)."""
    if demo_selector not in SELECTORS:
        raise PromptTuneError(f"--demo-selector {demo_selector!r}: choose one of {', '.join(SELECTORS)}.")
    if demos < 0:
        raise PromptTuneError(f"--demos {demos}: must be 0 or more.")
    if demos and demos_from is None:
        raise PromptTuneError("--demos needs --demos-from TRAIN: the labelled rows demos are drawn from.")
    template = template.hard()
    fields = sorted(template.variables)
    check_fields(rows, fields, need_label=True)
    if demos_from is not None:
        check_fields(demos_from, fields, need_label=True)
    labels = sorted(set(rows.labels()) | set(demos_from.labels() if demos_from else []))
    if verbalizer is None and getattr(template, "label_words", ()):  # a registry template's stored words
        verbalizer = template.stored_verbalizer(labels)  # registry/content.py StoredTemplate
    verb = verbalizer if isinstance(verbalizer, Verbalizer) else Verbalizer.parse(labels, verbalizer)

    def task_for(shots: list[dict]) -> PromptTask:
        tmpl = template.with_demos(shots) if shots else template
        task = PromptTask.create(
            backbone, labels, "zero-shot", {}, tmpl, verbalizer=Verbalizer.from_dict(verb.to_dict())
        )
        if calibrate:
            task.calibrate()
        return task

    t0 = time.perf_counter()
    if demos and demo_selector == "knn":
        nearest = NearestDemos(demos_from, fields, demos, embed)
        groups: dict[tuple, list[int]] = {}
        for i, idx in enumerate(nearest.indices(rows.rows)):
            groups.setdefault(tuple(idx), []).append(i)
        probs = torch.empty(len(rows), len(labels))
        for idx, members in groups.items():
            task = task_for(nearest.demos(idx))
            subset = [rows.rows[i] for i in members]
            probs[members] = task.model.score(task.model.encode(subset), batch_size=batch_size, calibrate=calibrate)
        gold = task.model.label_indices(rows)
    else:
        shots = select(demos_from, fields, demos, demo_selector, seed) if demos else []
        task = task_for(shots)
        gold = task.model.label_indices(rows)
        probs = task.model.score(task.model.encode(rows), batch_size=batch_size, calibrate=calibrate)
    seconds = time.perf_counter() - t0
    report = classification_report(probs.argmax(-1), gold, labels)
    report |= {
        "examples_per_s": len(rows) / seconds if seconds else 0.0,
        "eval_seconds": seconds,
        "demos": demos,
        "demo_selector": demo_selector if demos else None,
        "calibrated": calibrate,
    }
    return report
