"""Scoring a hard prompt (a template) on labelled rows.

A hard prompt (a template) is scored exactly like a soft prompt: the same verbalizer read-out over the
backbone, the same metrics; it runs through the zero-shot method (its soft slots left out), with
optional few-shot demos (fixed, seeded random, or nearest neighbours) and contextual calibration.

Calibration (``calibrate``): True always applies it, False never, ``"auto"`` (the default of `prompttune eval`)
fits it and keeps it only where it raises accuracy on labelled check rows that are not reported on (see
``calibration_check``). Contextual calibration helps SST-2 on the default model but lowered accuracy on RTE and
BoolQ (README, "Hard prompts in eval"), so applying it blindly is the wrong default. Every row is scored once;
the calibrated scores are the same scores with the content-free bias divided out, so checking costs nothing.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from prompttune.core.backbone import Backbone
from prompttune.core.data import Dataset, Row, check_fields
from prompttune.core.errors import PromptTuneError
from prompttune.core.metrics import classification_report
from prompttune.core.template import Template
from prompttune.core.verbalizer import Verbalizer
from prompttune.hard.calibration_check import CalibrationCheck, check_rows, decide
from prompttune.hard.fewshot import SELECTORS, Embed, NearestDemos, select
from prompttune.prompt_task import PromptTask

CALIBRATE_MODES = (True, False, "auto")


def evaluate_template(
    template: Template,
    rows: Dataset,
    backbone: Backbone,
    batch_size: int = 32,
    calibrate: bool | str = False,
    demos: int = 0,
    demo_selector: str = "random",
    demos_from: Dataset | None = None,
    verbalizer: str | Verbalizer | None = None,
    seed: int = 0,
    embed: Embed | None = None,
    calibration_rows: Dataset | None = None,
) -> dict:
    """Accuracy and per-class figures of a hard prompt on labelled rows (same metrics as an artifact's).

    ``calibrate="auto"``: the check rows are ``calibration_rows`` if given, else the ``demos_from`` rows not
    shown as demos, else a seeded part of ``rows`` that is then left out of the reported figures; the report's
    ``calibration`` says which rows were used and what each choice scored on them.
    """
    if calibrate not in CALIBRATE_MODES:
        raise PromptTuneError(f"calibrate={calibrate!r}: use True, False or 'auto'.")
    if demo_selector not in SELECTORS:
        raise PromptTuneError(f"--demo-selector {demo_selector!r}: choose one of {', '.join(SELECTORS)}.")
    if demos < 0:
        raise PromptTuneError(f"--demos {demos}: must be 0 or more.")
    if demos and demos_from is None:
        raise PromptTuneError("--demos needs --demos-from TRAIN: the labelled rows demos are drawn from.")
    if calibration_rows is not None and calibrate != "auto":
        raise PromptTuneError(
            "--calibration-rows: used only to decide whether calibration helps (the default); "
            "drop --calibrate / --no-calibrate, or drop --calibration-rows."
        )
    template = template.hard()
    fields = sorted(template.variables)
    check_fields(rows, fields, need_label=True)
    if demos_from is not None:
        check_fields(demos_from, fields, need_label=True)
    if calibration_rows is not None:
        check_fields(calibration_rows, fields, need_label=True)
    labels = sorted(set(rows.labels()) | set(demos_from.labels() if demos_from else []))
    if verbalizer is None and getattr(template, "label_words", ()):  # a registry template's stored words
        verbalizer = template.stored_verbalizer(labels)  # registry/content.py StoredTemplate
    verb = verbalizer if isinstance(verbalizer, Verbalizer) else Verbalizer.parse(labels, verbalizer)
    fit = calibrate is not False  # fit the content-free bias (cheap: 3 inputs per prompt)

    def task_for(shots: list[dict]) -> PromptTask:
        tmpl = template.with_demos(shots) if shots else template
        task = PromptTask.create(
            backbone, labels, "zero-shot", {}, tmpl, verbalizer=Verbalizer.from_dict(verb.to_dict())
        )
        if fit:
            task.calibrate()
        return task

    def scored(task: PromptTask, subset: list[Row]) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw, calibrated) label log-probabilities; calibrated is raw when calibration is not fitted."""
        raw = task.model.score(task.model.encode(Dataset(subset, rows.source)), batch_size=batch_size, calibrate=False)
        bias = task.model.verbalizer.calibration
        return raw, (F.log_softmax(raw - torch.tensor(bias), dim=-1) if fit and bias is not None else raw)

    shots = select(demos_from, fields, demos, demo_selector, seed) if demos and demo_selector != "knn" else []
    check: CalibrationCheck | None = None
    reported = rows
    if calibrate == "auto":
        check, reported = check_rows(rows, demos_from, calibration_rows, shots, fields, seed)
    nearest = NearestDemos(demos_from, fields, demos, embed) if demos and demo_selector == "knn" else None

    shared: list[PromptTask] = []  # fixed / random demos: one prompt for every row, built once

    def score_rows(subset: list[Row], skip: list[int | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if nearest is None:
            shared[:] = shared or [task_for(shots)]
            return scored(shared[0], subset)
        groups: dict[tuple, list[int]] = {}
        for i, idx in enumerate(nearest.indices(subset, skip)):
            groups.setdefault(tuple(idx), []).append(i)
        raw, cal = torch.empty(len(subset), len(labels)), torch.empty(len(subset), len(labels))
        for idx, members in groups.items():
            raw[members], cal[members] = scored(task_for(nearest.demos(idx)), [subset[i] for i in members])
        return raw, cal

    t0 = time.perf_counter()
    if check is not None:
        gold_indices(verb, check.rows.rows)
    gold = gold_indices(verb, reported.rows)  # unknown labels are an error before any scoring
    raw, cal = score_rows(reported.rows)
    seconds = time.perf_counter() - t0
    applied = calibrate is True
    if check is not None and len(check.rows):
        check_gold = gold_indices(verb, check.rows.rows)
        check_raw, check_cal = score_rows(check.rows.rows, check.skip)
        applied = decide(check, check_raw, check_cal, check_gold)
    report = classification_report((cal if applied else raw).argmax(-1), gold, labels)
    report |= {
        "examples_per_s": len(reported) / seconds if seconds else 0.0,
        "eval_seconds": seconds,
        "demos": demos,
        "demo_selector": demo_selector if demos else None,
        "calibrated": applied,
        "calibration": {
            "mode": {True: "on", False: "off", "auto": "auto"}[calibrate],
            "applied": applied,
            **(check.to_dict() if check is not None else {}),
            # what the other choice scores on the reported rows, for information only (never used to decide)
            **(
                {
                    "reported_rows": {
                        "accuracy_uncalibrated": float((raw.argmax(-1) == gold).double().mean()) if len(gold) else 0.0,
                        "accuracy_calibrated": float((cal.argmax(-1) == gold).double().mean()) if len(gold) else 0.0,
                    }
                }
                if fit
                else {}
            ),
        },
    }
    return report


def gold_indices(verb: Verbalizer, rows: list[Row]) -> torch.Tensor:
    """Each row's label index; a label the prompt does not know is an error naming the row."""
    return torch.tensor([verb.index(r.label or "", r.where()) for r in rows], dtype=torch.long)
