"""One search's bookkeeping: every candidate's score on each validation row it ran on, the history, the best
candidate scored on the whole validation set, and the race that re-scores the best minibatch candidates.

Validation rows are taken in one seeded order; a minibatch of ``n`` rows is its first ``n``. A candidate
(keyed by its state: instructions, demos, formats) is never run twice on a row: scoring it on more rows runs
only the rows it has not seen, so a re-score on the whole set costs what the minibatch did not cover.

The race (successive halving, as in Hyperband): the ``RACE_TOP`` best candidates on the minibatch (fewer when
the limits are tight: ``race_entrants``) are scored on twice as many rows, the better half (at least two) goes
on to twice as many again, until the survivors are scored on the whole set, the best first. On SST-2 with the
default decoder, demo sets scored 0.49-0.87 on 200 validation rows (8-32 demos, 3 seeds each): a 50-row
minibatch sorts out the bad ones but cannot tell the good ones apart (its standard error is ~0.055), while a
winner picked on 400 rows is still ~0.02 noisy.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence

from prompttune.core.errors import DataError
from prompttune.programs.lm import LM
from prompttune.programs.metrics import Metric
from prompttune.programs.modules import Module
from prompttune.programs.search import (
    BudgetExhausted,
    MeteredLM,
    Result,
    SearchConfig,
    candidate_entry,
    row_values,
    shuffled,
)

RACE_TOP = 8  # minibatch candidates that enter the race, at most
RACE_SHARE = 0.4  # of the rows the limits leave when the trials start: the race takes at most this much
RESERVE_MARGIN = 1.25  # the race's time is reserved with this much to spare


def candidate_key(candidate: Module) -> str:
    """What tells candidates apart: their state (instructions, demos, formats, calibration)."""
    return json.dumps(candidate.state(), sort_keys=True, default=str)


class Search:
    """The metered LM, the per-row scores, the history and the best fully scored candidate of one search."""

    def __init__(self, program: Module, val: Sequence[dict], metric: Metric, lm: LM, config: SearchConfig, progress):
        if not val:
            raise DataError("no rows to score the program on; give a validation file with rows.")
        self.lm = MeteredLM(lm, config)
        self.program, self.metric, self.config = program, metric, config
        self.order = shuffled(val, config.seed)
        self.progress = progress
        self.history: list[dict] = []
        self.scored: dict[str, dict[int, float]] = {}  # candidate key -> {row index in order: metric}
        self.best: tuple[float, Module] | None = None
        self.baseline = float("nan")
        self.stopped: str | None = None
        self.row_seconds: float | None = None  # measured time to score one row
        self.candidates: dict[str, Module] = {}  # candidate key -> the candidate

    def full_limit(self) -> bool:
        """``max_candidates`` distinct candidates scored (re-scoring one on more rows is not a new candidate)."""
        return len(self.scored) >= self.config.max_candidates

    def evaluate(self, kind: str, candidate: Module, rows: int | None = None) -> float:
        """The candidate's mean metric on the first ``rows`` validation rows (None: all of them)."""
        n = len(self.order) if rows is None else min(rows, len(self.order))
        key = candidate_key(candidate)
        done = dict(self.scored.get(key, {}))
        todo = [i for i in range(n) if i not in done]
        before, start = self.lm.calls, time.monotonic()
        if todo:
            values = row_values(candidate, [self.order[i] for i in todo], self.metric, self.lm)
            done.update(zip(todo, values, strict=True))
            per_row = (time.monotonic() - start) / len(todo)
            self.row_seconds = per_row if self.row_seconds is None else 0.7 * self.row_seconds + 0.3 * per_row
        self.scored[key] = done
        self.candidates[key] = candidate
        value = sum(done[i] for i in range(n)) / n
        entry = candidate_entry(len(self.history), kind, candidate, value, self.lm.calls - before)
        if n < len(self.order):
            entry["rows"] = n
        self.history.append(entry)
        if n == len(self.order) and (self.best is None or value > self.best[0]):
            self.best = (value, candidate)
        if self.progress:
            self.progress(entry, self.best[0] if self.best else value)
        return value

    def rows_left(self) -> float:
        """Rows the model-call and time limits still allow (time once a row has been timed)."""
        calls = self.config.max_model_calls - self.lm.calls
        if self.row_seconds is None:
            return calls
        return min(calls, (self.config.max_seconds - self.lm.seconds()) / (self.row_seconds * RESERVE_MARGIN))

    def can_afford(self, rows: int) -> bool:
        return rows <= self.rows_left()

    def ensemble_reserve(self) -> int:
        """Rows of model work to keep for ``--ensemble``: each pool member's validation rows not yet scored (a
        pool member has the race's first rung); the members' scores on rows scored before are kept (MeteredLM)."""
        n = self.config.ensemble
        return 0 if n < 2 else (2 * n - 1) * (len(self.order) - pool_rows(self))

    def race_entrants(self, start: int) -> int:
        """How many minibatch candidates the race takes: ``RACE_TOP``, or fewer (down to 2) when its cost
        would pass ``RACE_SHARE`` of the rows the limits leave, so the trials keep the larger part."""
        for top in range(RACE_TOP, 2, -1):
            if race_cost(len(self.order), start, top) <= RACE_SHARE * self.rows_left():
                return top
        return 2

    def result(self) -> Result:
        if self.best is None:
            raise DataError(
                f"the search stopped ({self.stopped}) before any candidate was scored on the whole validation set; "
                "raise the limit or give fewer validation rows."
            )
        return Result(
            program=self.best[1],
            best_val_score=self.best[0],
            baseline_val_score=self.baseline,
            candidates_evaluated=len(self.scored),
            model_calls=self.lm.calls,
            seconds=round(self.lm.seconds(), 3),
            history=self.history,
            stopped=self.stopped,
        )


def run_search(search: Search, body: Callable[[], None]) -> Result:
    """Score the program as given on the whole validation set, run the optimizer's body, keep the best (with
    ``ensemble`` above 1, the best candidates' ensemble where it scores above the best alone)."""
    try:
        search.baseline = search.evaluate("as-given", search.program.copy())
        body()
        if search.config.ensemble > 1:
            try_ensemble(search, search.config.ensemble)
    except BudgetExhausted as e:
        search.stopped = str(e)
    return search.result()


def pool_rows(search: Search) -> int:
    """The rows a candidate needs to have been scored on to join an ensemble: the race's first rung (twice the
    minibatch), or every validation row."""
    return min(len(search.order), 2 * search.config.minibatch_size)


def try_ensemble(search: Search, n: int) -> None:
    """An ensemble of the best candidate and others from the pool: the ``2n - 1`` best candidates besides it
    scored on at least ``pool_rows`` rows (by their mean there: the race's entrants). Each ensemble tried is a
    candidate scored on the whole set, so one that beats the best alone becomes the best.

    - ``greedy`` (Caruana et al. 2004, forward selection): add the pool member that lifts the ensemble's score
      the most, while one does and the ensemble has fewer than ``n`` members;
    - ``top`` (their "sorted initialization" alone): the best and the next ``n - 1`` of the pool, one ensemble.
      Choosing each member on the validation rows fits them: on SST-2 (9 batch-calibrated prompts, 400
      validation rows) greedy stopped at 2-3 members, 0.885-0.887 on validation and 0.858-0.864 held-out,
      while the 3-9 best averaged kept 0.877-0.891 held-out (docs/programs.md)."""
    from prompttune.programs.ensemble import Ensemble

    if search.best is None:
        return
    least = pool_rows(search)
    best_key = candidate_key(search.best[1])
    ranked = sorted(
        (
            (sum(rows.values()) / len(rows), key)
            for key, rows in search.scored.items()
            if len(rows) >= least and key != best_key and not isinstance(search.candidates[key], Ensemble)
        ),
        key=lambda t: -t[0],
    )
    pool = [search.candidates[key] for _, key in ranked[: 2 * n - 1]]
    chosen, current = [search.best[1]], search.best[0]
    if search.config.ensemble_select == "top":
        if pool:
            search.evaluate(f"ensemble of the {min(n, len(pool) + 1)} best", Ensemble([*chosen, *pool[: n - 1]]))
        return
    while len(chosen) < n and pool:
        tried = [
            (search.evaluate(f"ensemble of {len(chosen) + 1}", Ensemble([*chosen, c])), i) for i, c in enumerate(pool)
        ]
        value, i = max(tried, key=lambda t: (t[0], -t[1]))
        if value <= current:
            return
        chosen.append(pool.pop(i))
        current = value


def _rungs(total: int, start: int, top: int) -> list[tuple[int, int]]:
    """(rows, candidates) of each rung after the minibatch of ``start`` rows."""
    out, rows, alive = [], start, top
    while rows < total:
        rows = min(total, rows * 2)
        out.append((rows, alive))
        alive = min(alive, max(2, math.ceil(alive / 2)))
    return out


def race_cost(total: int, start: int, top: int = RACE_TOP) -> int:
    """Rows the race scores at most (each survivor's new rows, rung by rung)."""
    cost, before = 0, start
    for rows, alive in _rungs(total, start, top):
        cost += alive * (rows - before)
        before = rows
    return cost


def race(search: Search, trials: list[tuple[float, Module, str]], start: int, top: int = RACE_TOP) -> None:
    """Successive halving from minibatch scores of ``start`` rows up to the whole validation set."""
    seen, alive = set(), []
    for value, candidate, kind in sorted(trials, key=lambda t: -t[0]):
        key = candidate_key(candidate)
        if key not in seen and len(alive) < top:
            seen.add(key)
            alive.append((value, candidate, kind))
    total = len(search.order)
    for rows, keep in _rungs(total, start, top):
        alive = sorted(alive, key=lambda t: -t[0])[:keep]
        tag = "(full)" if rows == total else f"(race, {rows} rows)"
        alive = [(search.evaluate(f"{kind} {tag}", candidate, rows), candidate, kind) for _, candidate, kind in alive]
