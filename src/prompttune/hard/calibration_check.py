"""Deciding on labelled rows whether contextual calibration helps a hard prompt (``calibrate="auto"``).

Calibration divides out the label bias a prompt shows on content-free inputs (Zhao et al. 2021). On the
default 135M model it raised SST-2 accuracy but lowered it on RTE and BoolQ (README, "Hard prompts in eval"):
whether it helps depends on the task and the prompt, so `prompttune eval` measures it. The check rows, first
found first used:

1. ``--calibration-rows FILE``: a seeded sample of at most CHECK_MAX of its rows;
2. ``--demos-from POOL``: a seeded sample of the pool's rows that are not shown as demos (with knn demos, a
   check row is never its own neighbour);
3. otherwise a seeded CHECK_FRACTION of the evaluated rows (CHECK_MIN to CHECK_MAX of them), which are then
   left out of the reported figures. Under 2 x CHECK_MIN rows, nothing is set aside and calibration is off.

Calibration is applied only when it scores strictly higher on the check rows; a tie keeps the raw scores.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import torch

from prompttune.core.data import Dataset, Row
from prompttune.core.errors import DataError

CHECK_FRACTION = 0.2
CHECK_MIN = 20
CHECK_MAX = 100


@dataclass
class CalibrationCheck:
    rows: Dataset
    source: str  # which rows, in words (printed by `prompttune eval`)
    held_out: int = 0  # evaluated rows set aside for the check and not reported on
    skip: list[int | None] | None = None  # per check row: its own index in the demo pool (knn must not pick it)
    accuracy: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "check_rows": len(self.rows),
            "check_source": self.source,
            "held_out_of_report": self.held_out,
            **({"check_" + k: v for k, v in self.accuracy.items()}),
        }


def _key(values: dict, fields: list[str]) -> str:
    """A row as the prompt sees it: its template fields and label (extra fields such as ids do not count)."""
    label = values.get("label")
    picked = {f: values.get(f) for f in fields} | {"label": None if label is None else str(label)}
    return json.dumps(picked, sort_keys=True, ensure_ascii=False, default=str)


def _sample(rows: list[Row], k: int, seed: int) -> list[Row]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in sorted(order[:k])]


def check_rows(
    rows: Dataset,
    pool: Dataset | None,
    calibration_rows: Dataset | None,
    shots: list[dict],
    fields: list[str],
    seed: int,
) -> tuple[CalibrationCheck, Dataset]:
    """The check rows and the rows to report on (all of ``rows`` unless some were set aside)."""
    shown = {_key(s, fields) for s in shots}
    pool_index = {_key(r.fields, fields): i for i, r in enumerate(pool.rows)} if pool is not None else {}

    def skip_for(picked: list[Row]) -> list[int | None] | None:
        return [pool_index.get(_key(r.fields, fields)) for r in picked] if pool is not None else None

    if calibration_rows is not None:
        if len(calibration_rows) < CHECK_MIN:
            raise DataError(
                f"--calibration-rows {calibration_rows.source}: {len(calibration_rows)} rows; give at least "
                f"{CHECK_MIN} labelled rows, or leave the flag out."
            )
        picked = _sample(calibration_rows.rows, CHECK_MAX, seed)
        source = (
            f"--calibration-rows {calibration_rows.source}: {len(picked)} of its {len(calibration_rows)} rows "
            f"(seeded sample, seed {seed})"
        )
        return CalibrationCheck(Dataset(picked, calibration_rows.source), source, 0, skip_for(picked)), rows
    if pool is not None:
        unshown = [r for r in pool.rows if _key(r.fields, fields) not in shown]
        if len(unshown) >= CHECK_MIN:
            picked = _sample(unshown, CHECK_MAX, seed)
            source = f"--demos-from {pool.source}: {len(picked)} rows not shown as demos (seeded sample, seed {seed})"
            return CalibrationCheck(Dataset(picked, pool.source), source, 0, skip_for(picked)), rows
    n = len(rows)
    if n < 2 * CHECK_MIN:
        source = (
            f"none: {n} rows are too few to set {CHECK_MIN} aside (give --calibration-rows FILE, or "
            "--calibrate to apply calibration unchecked)"
        )
        return CalibrationCheck(Dataset([], rows.source), source), rows
    k = min(CHECK_MAX, max(CHECK_MIN, round(n * CHECK_FRACTION)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    picked = [rows.rows[i] for i in sorted(held)]
    rest = [r for i, r in enumerate(rows.rows) if i not in held]
    source = (
        f"{rows.source}: {k} of its {n} rows (seeded, seed {seed}), left out of the figures above; "
        "give --calibration-rows FILE to report on every row"
    )
    return CalibrationCheck(Dataset(picked, rows.source), source, k), Dataset(rest, rows.source)


def decide(check: CalibrationCheck, raw: torch.Tensor, calibrated: torch.Tensor, gold: torch.Tensor) -> bool:
    """Apply calibration only if it is strictly more accurate on the check rows; records both accuracies."""
    if not len(gold):
        return False
    check.accuracy = {
        "accuracy_uncalibrated": float((raw.argmax(-1) == gold).double().mean()),
        "accuracy_calibrated": float((calibrated.argmax(-1) == gold).double().mean()),
    }
    return check.accuracy["accuracy_calibrated"] > check.accuracy["accuracy_uncalibrated"]
