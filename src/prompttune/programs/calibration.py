"""Batch calibration (Zhou et al., ICLR 2024): a label chosen by score, relative to its mean score over rows.

A step that picks a label by its log-probability is biased towards some labels by its prompt: on SST-2 with
the 135M default decoder, label-balanced sets of 8 demos (plain ``Text:`` / ``Sentiment:``) answered
"positive" for 4% to 87% of the rows and scored 0.48-0.86 on 1,000 held-out rows (14 sets of 8 or 16 demos, mean
0.739). Batch calibration estimates that bias as the mean of the step's label log-probabilities (normalized over
the labels) over unlabeled rows and subtracts it from every row's: the same sets then scored 0.76-0.86 (mean
0.815; with the content-free "N/A" row of contextual calibration 0.56-0.81, mean 0.609), with offsets fitted on
32 or 400 rows alike (docs/programs.md). In mipro's search it moved the result within noise.

The offsets are fitted once, on training rows' inputs (their labels are not read), and saved with the step
(``offsets`` in program.json: one number per label), so a row's answer never depends on the other rows asked
with it. They apply where the LM gives label scores (the in-process backbone); over HTTP a label is generated
and they are not applied, as with contextual calibration.
"""

from __future__ import annotations

from collections.abc import Sequence

from prompttune.core.errors import DataError
from prompttune.programs.lm import LM
from prompttune.programs.modules import Module, using

CALIBRATION_ROWS = 32  # training rows whose inputs give the offsets (32-400 gave the same accuracy on SST-2)


def fitted_steps(program: Module, rows: Sequence[dict], lm: LM) -> list:
    """The steps batch calibration applies to, where the LM gives label scores: one label output chosen by
    score, every input a field of the rows that no step writes (a later step's inputs are earlier steps'
    outputs, which the rows do not hold as the step would see them)."""
    if not lm.can_score or not rows:
        return []
    steps = [p for _, p in program.named_predictors()]
    written = {f.name for p in steps for f in p.outputs}
    fields = set(rows[0]) - written
    return [p for p in steps if p._chooses(lm) and set(p.signature.input_names) <= fields]


def fit_offsets(program: Module, rows: Sequence[dict], lm: LM) -> bool:
    """Set each calibratable step's ``offsets`` from ``rows`` (their inputs only); False where the LM gives no
    label scores or no step can take them (the program is left as it was)."""
    steps = fitted_steps(program, rows, lm)
    if not steps:
        return False
    with using(lm):
        for step in steps:
            step.calibrate, step.offsets = False, None
            names = step.signature.input_names
            inputs = [{n: r[n] for n in names} for r in rows if all(n in r for n in names)]
            if not inputs:
                raise DataError(f"batch calibration: no row holds the inputs {names}.")
            got = step.option_logprobs(inputs)
            if got is None:
                return False
            options, scores = got
            step.offsets = {o: sum(col) / len(col) for o, col in zip(options, zip(*scores, strict=True), strict=True)}
    return True
