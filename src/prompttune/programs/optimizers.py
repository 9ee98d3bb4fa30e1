"""Optimizers: ``optimize(program, train, val, metric, lm, config) -> Result`` with a NEW program.

- ``bootstrap``: run the program on training rows; every run whose output passes the metric gives each
  predictor it went through one demo (its inputs and its own outputs), up to ``max_demos``. Scored on
  validation beside the program as given; the better of the two is returned.
- formats (``random-search`` and ``mipro``, unless ``formats=False``): each predictor's layout and field
  names (formats.py) are screened first on a validation minibatch without demos (at most half of
  ``max_candidates``, the program as given included); the best ``FORMATS_KEPT`` go on into the search.
- ``random-search``: the program as given, then labeled sets (``max_labeled_demos`` training rows as they
  are, balanced over the labels) and bootstrapped sets (a seeded number of demos from 1 to ``max_demos``) in
  turn, over seeded shuffles of the training rows, each with the next of the kept formats; each scored on
  validation, the best kept. With ``batch_calibration`` (the default) a demo candidate is batch-calibrated
  (calibration.py: label offsets fitted on ``CALIBRATION_ROWS`` training rows' inputs) where its LM gives
  label scores.
- ``mipro`` (after MIPROv2, simplified): instructions proposed by the LM from a grounded summary of the
  data (fields, label counts, lengths and a few rows, computed, not written by the LM) and the program's
  signature, one per "tip" (MIPROv2's prompting tips), plus the program's own; demo sets as in random
  search; the kept formats; calibration off, contextual (a label chosen relative to its score on a
  content-free row) or, with ``batch_calibration`` where the LM gives label scores, batch (calibration.py).
  Optuna's TPE (as MIPROv2) proposes (format, instruction, demo set, calibration) choices (tpe.py)
  and scores each on a minibatch of validation rows, while the model calls and time left cover the race;
  then the race (candidates.py: successive halving) takes the best minibatch candidates to the whole
  validation set.
- ``ensemble`` above 1 (any optimizer): after the search, greedy ensemble selection from the best candidates
  (candidates.try_ensemble; ensemble.py: label scores averaged), kept where it scores above the best alone.

The input program is never changed: every candidate is a copy (``with_demos``).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence

from prompttune.core.errors import DataError
from prompttune.programs.calibration import CALIBRATION_ROWS, fit_offsets, fitted_steps
from prompttune.programs.candidates import Search, race, race_cost, run_search
from prompttune.programs.formats import FORMATS_KEPT, describe, format_candidates
from prompttune.programs.lm import LM
from prompttune.programs.modules import Module, Predict, using
from prompttune.programs.search import (
    Progress,
    Result,
    SearchConfig,
    bootstrap_demos,
    labeled_demos,
    shuffled,
    with_demos,
)
from prompttune.programs.tpe import tpe_search

TIPS = (
    "",
    "Keep the instruction short and direct.",
    "Say exactly which words the answer may use.",
    "Describe what a careful expert would look for in the input.",
    "Mention the most common mistakes to avoid.",
    "Write it as a friendly request.",
)
MAX_INSTRUCTION_CHARS = 400


class _Full(Exception):
    """max_candidates reached, or the race's reserve: the trials end there."""


def bootstrap(program, train, val, metric, lm, config=SearchConfig(), progress: Progress | None = None) -> Result:
    search = Search(program, val, metric, lm, config, progress)

    def body() -> None:
        if search.full_limit():
            return
        demos = bootstrap_demos(program, train, metric, search.lm, config, config.max_demos)
        search.evaluate("bootstrap", with_demos(program, demos))

    return run_search(search, body)


def demo_sets(program: Module, train, metric, lm: LM, config: SearchConfig, n: int) -> Callable[[int], tuple]:
    """The i-th candidate demo set, built when asked: labeled rows (even i), seeded bootstraps (odd i)."""
    rng = random.Random(config.seed)
    sizes = [rng.randint(1, max(1, config.max_demos)) for _ in range(n)]

    def make(i: int) -> tuple[str, dict]:
        rows = shuffled(train, config.seed + i)
        if i % 2 == 0:  # labeled sets (balanced over the labels) and bootstrapped ones take turns
            return "labeled", labeled_demos(program, rows, config.max_labeled_demos)
        return "bootstrap", bootstrap_demos(program, rows, metric, lm, config, sizes[i % n])

    return make


def screen_formats(search: Search, program: Module, given: dict, screened: list | None = None) -> dict[str, list]:
    """Each predictor's candidate formats (formats.py) scored on a validation minibatch without demos; the best
    ``FORMATS_KEPT`` kept per predictor (the program's own format first when screening is off or not needed).

    Without demos, because which demos are shown moves a small model's accuracy more than the format does
    (SST-2, 8 demos, one format: 0.54-0.85 over six demo sets), so a format screened on one demo set is
    mostly judged by that set.
    """
    demos: dict = {}
    screened = [] if screened is None else screened  # (minibatch score, candidate, kind) of each format
    out = {}
    rows = search.config.minibatch_size  # the first rows of the validation order (all of them when fewer)
    for name, p in program.named_predictors():
        candidates = format_candidates(p, given) if search.config.formats else []
        if len(candidates) < 2:
            out[name] = candidates[:1] or [{"layout": p.layout, "prefixes": dict(p.prefixes)}]
            continue
        scored = []
        for patch in candidates:
            if search.full_limit() or len(search.scored) >= search.config.max_candidates // 2:
                break  # half the candidates at most: a small --max-candidates still tries demos
            candidate, kind = with_demos(program, demos, formats={name: patch}), f"format {describe(patch)}"
            value = search.evaluate(kind, candidate, rows)
            scored.append((value, patch))
            screened.append((value, candidate, kind))
        out[name] = [patch for _, patch in sorted(scored, key=lambda t: -t[0])[:FORMATS_KEPT]] or candidates[:1]
    return out


def calibrator(search: Search, program: Module, train) -> Callable[[Module], bool] | None:
    """With ``batch_calibration``, where the LM gives label scores and a step can take offsets: a function that
    fits a candidate's offsets on the first ``CALIBRATION_ROWS`` of a seeded shuffle of the training rows."""
    rows = shuffled(train, search.config.seed + 7919)[:CALIBRATION_ROWS]
    if not (search.config.batch_calibration and rows and fitted_steps(program, rows, search.lm)):
        return None
    return lambda candidate: fit_offsets(candidate, rows, search.lm)


def random_search(
    program, train, val, metric, lm, config=SearchConfig(), progress: Progress | None = None, prefixes=None
) -> Result:
    search = Search(program, val, metric, lm, config, progress)
    make = demo_sets(program, train, metric, search.lm, config, config.max_candidates)

    def body() -> None:
        formats = screen_formats(search, program, prefixes or {})
        calibrate = calibrator(search, program, train)
        i = 0
        while not search.full_limit():
            kind, demos = make(i)
            fmt = {n: v[i % len(v)] for n, v in formats.items()}
            label = f" x {', '.join(describe(f) for f in fmt.values())}" if config.formats else ""
            candidate = with_demos(program, demos, formats=fmt)
            if calibrate and calibrate(candidate):
                label += ", batch-calibrated"
            search.evaluate(kind + label, candidate)
            i += 1

    return run_search(search, body)


def mipro(
    program, train, val, metric, lm, config=SearchConfig(), progress: Progress | None = None, instructions=(),
    prefixes=None,
) -> Result:  # fmt: skip
    search = Search(program, val, metric, lm, config, progress)
    n_sets = max(2, config.max_candidates // 2)
    make = demo_sets(program, train, metric, search.lm, config, n_sets)

    def body() -> None:
        proposed = {
            name: propose_instructions(p, train, search.lm, config, list(instructions))
            for name, p in program.named_predictors()
        }
        n_instr = min(len(v) for v in proposed.values())
        sets: dict[int, dict] = {0: make(0)[1]}
        trials: list[tuple[float, Module, str]] = []  # the formats screened without demos compete too
        formats = screen_formats(search, program, prefixes or {}, trials)
        n_fmt = min(len(v) for v in formats.values())
        mini = min(config.minibatch_size, len(search.order))
        use_mini = mini < len(search.order)
        top = search.race_entrants(mini) if use_mini else 0
        reserve = race_cost(len(search.order), mini, top) if use_mini else 0
        reserve += search.ensemble_reserve()
        budget = config.max_candidates - len(search.scored)
        calibrate = calibrator(search, program, train)  # calibration choice 2: batch

        def trial(f: int, i: int, j: int, c: int) -> float:
            if search.full_limit() or not search.can_afford(mini + reserve + (CALIBRATION_ROWS if c == 2 else 0)):
                raise _Full  # the rest of the limits is kept for the race
            if j not in sets:
                sets[j] = make(j)[1]
            fmt = {n: v[f] | {"calibrate": c == 1} for n, v in formats.items()}
            candidate = with_demos(program, sets[j], {n: v[i] for n, v in proposed.items()}, fmt)
            kind = f"instruction {i} x demos {j} x {', '.join(describe(x) for x in fmt.values())}"
            if c == 2 and calibrate is not None and calibrate(candidate):
                kind += ", batch-calibrated"
            trials.append((search.evaluate(kind, candidate, mini), candidate, kind))
            return trials[-1][0]

        sizes = {"format": n_fmt, "instruction": n_instr, "demos": n_sets, "calibrate": 3 if calibrate else 2}
        try:
            tpe_search(sizes, max(1, budget), config.seed, trial)
        except _Full:
            pass
        if use_mini:
            race(search, trials, mini, top)

    return run_search(search, body)


def data_summary(rows: Sequence[dict], predictor: Predict, k: int = 3) -> str:
    """A factual summary of the training rows (computed, so it cannot invent anything)."""
    lines = [f"{len(rows)} rows."]
    for f in predictor.signature.inputs:
        lengths = [len(str(r[f.name]).split()) for r in rows if f.name in r]
        if lengths:
            lines.append(f"Field '{f.name}': about {sum(lengths) // len(lengths)} words on average.")
    for f in predictor.signature.outputs:
        counts = Counter(str(r[f.name]) for r in rows if f.name in r)
        if counts and len(counts) <= 20:
            shown = ", ".join(f"{v} ({c})" for v, c in counts.most_common())
            lines.append(f"Field '{f.name}' takes the values: {shown}.")
    need = predictor.signature.input_names + predictor.signature.output_names
    for r in [r for r in rows if all(n in r for n in need)][:k]:
        lines.append("Example: " + "; ".join(f"{n}: {str(r[n])[:200]}" for n in need))
    return "\n".join(lines)


PROPOSER = Predict(
    "task_fields, data_summary, current_instruction, tip -> instruction: a one- or two-sentence instruction",
    instruction="You write the instruction of a prompt for a language model. Read the task's fields and a "
    "summary of its data, and write a better instruction for the task.",
    max_retries=0,
    max_tokens=96,
)


def propose_instructions(predictor: Predict, train, lm: LM, config: SearchConfig, given: list[str]) -> list[str]:
    """The predictor's own instruction, those given, then up to ``num_instructions`` proposed by the LM."""
    own = predictor.instruction or ""
    out = [own, *[g for g in given if g and g != own]]
    summary = data_summary(shuffled(train, config.seed)[:200], predictor)
    fields = f"{predictor.signature}; " + "; ".join(f.describe() for f in predictor.signature.outputs)
    proposer = PROPOSER.copy()
    with using(lm):
        for tip in TIPS[: config.num_instructions]:
            try:
                text = proposer(task_fields=fields, data_summary=summary, current_instruction=own or "(none)", tip=tip)
            except DataError:
                continue
            text = " ".join(str(text.instruction).split())[:MAX_INSTRUCTION_CHARS]
            if text and text not in out:
                out.append(text)
    return out


OPTIMIZERS = {"bootstrap": bootstrap, "random-search": random_search, "mipro": mipro}


def optimize(name: str, program, train, val, metric, lm, config=SearchConfig(), progress=None, **kw) -> Result:
    if name not in OPTIMIZERS:
        raise DataError(f"--optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}.")
    start = time.monotonic()
    result = OPTIMIZERS[name](program, train, val, metric, lm, config, progress, **kw)
    result.seconds = round(time.monotonic() - start, 3)
    return result
