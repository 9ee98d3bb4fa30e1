"""What every optimizer shares: the limits, the metered LM, scoring a program on rows, collecting demos.

Every search is bounded three ways, each with a named limit (``SearchConfig``): ``max_candidates``
(programs scored on validation), ``max_model_calls`` (LM calls of every kind, bootstrap and proposals
included) and ``max_seconds``. When a limit is reached the search stops, keeps the best candidate fully
scored so far, and says which limit stopped it (``Result.stopped``).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from prompttune.core.errors import DataError
from prompttune.programs.lm import LM, Prompt
from prompttune.programs.metrics import Metric
from prompttune.programs.modules import MAX_DEMOS, Module, tracing, using
from prompttune.programs.parse import OutputParseError

LIMITS = {  # name: (low, high)
    "max_candidates": (1, 1000),
    "max_model_calls": (1, 10_000_000),
    "max_demos": (0, MAX_DEMOS),
    "max_labeled_demos": (0, MAX_DEMOS),
    "num_instructions": (1, 32),
    "minibatch_size": (1, 100_000),
    "seed": (0, 2**31 - 1),
    "ensemble": (1, 8),
}
MAX_SECONDS = 7 * 24 * 3600
ENSEMBLE_SELECT = ("greedy", "top")


@dataclass(frozen=True)
class SearchConfig:
    """The optimizers' settings; each checks itself and names its flag when out of range."""

    max_candidates: int = 12
    max_model_calls: int = 5000
    max_seconds: float = 1800.0
    max_demos: int = 4  # bootstrapped demos per predictor
    max_labeled_demos: int = 4  # demos taken from the training rows as they are (random search's labeled set)
    num_instructions: int = 4  # mipro: instructions proposed per predictor
    minibatch_size: int = 32  # mipro: validation rows per trial before the best are scored in full
    pass_threshold: float = 1.0  # a trace is kept as a demo when the metric gives at least this
    seed: int = 0
    formats: bool = True  # random-search, mipro: screen layouts and field names first (formats.py)
    ensemble: int = 1  # above 1: an ensemble of the best candidates (candidates.try_ensemble)
    ensemble_select: str = "greedy"  # greedy: members added while one lifts validation; top: the N best averaged
    batch_calibration: bool = True  # random-search, mipro: demo candidates with label offsets (calibration.py)

    def __post_init__(self) -> None:
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                flag = name.replace("_", "-")
                raise DataError(f"{name} (--{flag}) is {value!r}: give a whole number from {low} to {high:,}.")
        s = self.max_seconds
        if isinstance(s, bool) or not isinstance(s, int | float) or math.isnan(s) or not 0 < s <= MAX_SECONDS:
            raise DataError(f"max_seconds (--max-seconds) is {s!r}: give seconds above 0, at most {MAX_SECONDS:,}.")
        if self.ensemble_select not in ENSEMBLE_SELECT:
            raise DataError(
                f"ensemble_select (--ensemble-select) is {self.ensemble_select!r}: use {' or '.join(ENSEMBLE_SELECT)}."
            )
        for name in ("formats", "batch_calibration"):
            if not isinstance(getattr(self, name), bool):
                raise DataError(f"{name} is {getattr(self, name)!r}: give true or false.")
        t = self.pass_threshold
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= 1:
            raise DataError(f"pass_threshold is {t!r}: give a number from 0 to 1.")


class BudgetExhausted(Exception):
    """Raised inside a search when a limit is reached; the optimizer stops and keeps what it has."""


class MeteredLM(LM):
    """An LM that counts calls and refuses the one past ``max_model_calls`` or ``max_seconds``."""

    def __init__(self, lm: LM, config: SearchConfig):
        self.lm, self.config, self.calls = lm, config, 0
        self.name, self.can_choose, self.can_score = lm.name, lm.can_choose, lm.can_score
        self.start = time.monotonic()
        self._scores: dict[tuple, list[float]] = {}  # (prompt, options, baseline) -> option log-probabilities

    def seconds(self) -> float:
        return time.monotonic() - self.start

    def _spend(self, n: int = 1) -> None:
        """Count ``n`` calls, or refuse them all when they would pass a limit."""
        if self.calls + n > self.config.max_model_calls:
            raise BudgetExhausted(f"max_model_calls ({self.config.max_model_calls})")
        if self.seconds() >= self.config.max_seconds:
            raise BudgetExhausted(f"max_seconds ({self.config.max_seconds:g})")
        self.calls += n

    def complete(self, prompt: Prompt, max_tokens: int) -> str:
        self._spend()
        return self.lm.complete(prompt, max_tokens)

    def choose(self, prompt: Prompt, options: Sequence[str], baseline: Prompt | None = None) -> str | None:
        self._spend()
        return self.lm.choose(prompt, options, baseline)

    def choose_many(self, prompts: Sequence[Prompt], options: Sequence[str], baseline: Prompt | None = None):
        if self.can_score:  # through the scores, which are kept: a question asked before costs no call
            return super().choose_many(prompts, options, baseline)
        self._spend(len(prompts))
        return self.lm.choose_many(prompts, options, baseline)

    def option_logprobs_many(self, prompts: Sequence[Prompt], options: Sequence[str], baseline: Prompt | None = None):
        """Scores kept by question (prompt, options, baseline): only questions not asked before in this search
        are asked and counted (an ensemble of candidates scored before costs nothing)."""
        keys = [(p, tuple(options), baseline) for p in prompts]
        new = [i for i, k in enumerate(keys) if k not in self._scores]
        if new:
            self._spend(len(new))
            got = self.lm.option_logprobs_many([prompts[i] for i in new], options, baseline)
            if got is None:
                return None
            for i, row in zip(new, got, strict=True):
                self._scores[keys[i]] = list(row)
        return [list(self._scores[k]) for k in keys]


@dataclass
class Result:
    """What an optimizer returns: a new program, its validation score, and how the search went."""

    program: Module
    best_val_score: float
    baseline_val_score: float
    candidates_evaluated: int
    model_calls: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    stopped: str | None = None  # the limit that ended the search early, if one did

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("program")
        return out


def output_names(program: Module) -> set[str]:
    return {f.name for _, p in program.named_predictors() for f in p.outputs}


def program_inputs(program: Module, row: dict) -> dict:
    """The row without any field a predictor writes (a gold label never reaches the prompt)."""
    outs = output_names(program)
    return {k: v for k, v in row.items() if k not in outs}


SCORE_CHUNK = 64  # rows a program runs on at once when scored (its label choices batched, module.batch)


def run_row(program: Module, row: dict):
    """The program's prediction for a row, or None when an output did not parse (after its retries)."""
    try:
        return program(**program_inputs(program, row))
    except OutputParseError:
        return None


def run_rows(program: Module, rows: Sequence[dict]) -> list:
    """``run_row`` over many rows, in chunks of ``SCORE_CHUNK`` run together (``Module.batch``)."""
    out: list = []
    for i in range(0, len(rows), SCORE_CHUNK):
        out += program.batch([program_inputs(program, r) for r in rows[i : i + SCORE_CHUNK]])
    return out


def row_values(program: Module, rows: Sequence[dict], metric: Metric, lm: LM) -> list[float]:
    """The metric of each row (a reply that does not parse scores 0)."""
    with using(lm):
        preds = run_rows(program, rows)
    return [metric(row, pred) if pred is not None else 0.0 for row, pred in zip(rows, preds, strict=True)]


def score(program: Module, rows: Sequence[dict], metric: Metric, lm: LM) -> float:
    """The mean metric over ``rows`` (a reply that does not parse scores 0)."""
    if not rows:
        raise DataError("no rows to score the program on; give a validation file with rows.")
    return sum(row_values(program, rows, metric, lm)) / len(rows)


def bootstrap_demos(
    program: Module, rows: Sequence[dict], metric: Metric, lm: LM, config: SearchConfig, max_demos: int
) -> dict[str, list[dict]]:
    """Run ``program`` on ``rows`` in order; each passing trace gives every predictor it ran one demo."""
    names = {id(p): n for n, p in program.named_predictors()}
    demos: dict[str, list[dict]] = {n: [] for n in names.values()}
    with using(lm):
        for row in rows:
            if max_demos == 0 or all(len(d) >= max_demos for d in demos.values()):
                break
            with tracing() as trace:
                pred = run_row(program, row)
            if pred is None or metric(row, pred) < config.pass_threshold:
                continue
            for predictor, values, outputs in trace:
                bucket = demos[names[id(predictor)]]
                if len(bucket) < max_demos:
                    bucket.append({**values, **outputs, "_source": "bootstrap"})
    return demos


def labeled_demos(program: Module, rows: Sequence[dict], k: int) -> dict[str, list[dict]]:
    """Up to ``k`` rows as they are, for each predictor whose inputs and outputs the rows hold, taken in turn
    from each output value (label) in order of first appearance: a small model copies the labels its demos
    lean to, so a set should show every label about equally."""
    out = {}
    for name, p in program.named_predictors():
        need = [*p.signature.input_names, *p.signature.output_names]
        by_value: dict[str, list[dict]] = {}
        for r in rows:
            if all(f in r for f in need):
                key = json.dumps([r[f] for f in p.signature.output_names], default=str)
                by_value.setdefault(key, []).append({f: r[f] for f in need})
        groups, picked = list(by_value.values()), []
        for i in range(max((len(g) for g in groups), default=0)):
            picked += [g[i] for g in groups if i < len(g)]
            if len(picked) >= k:
                break
        out[name] = picked[:k]
    return out


def with_demos(
    program: Module,
    demos: dict[str, list[dict]],
    instructions: dict[str, str] | None = None,
    formats: dict[str, dict] | None = None,
) -> Module:
    """A copy of ``program`` with these demos (and instructions, and formats: layout + prefixes) per predictor.
    Batch calibration's offsets are dropped (they were fitted to the old prompt; calibration.fit_offsets)."""
    new = program.copy()
    for name, p in new.named_predictors():
        kept = [{k: v for k, v in d.items() if not k.startswith("_")} for d in demos.get(name, [])]
        state = {"instruction": (instructions or {}).get(name, p.instruction), "demos": kept[:MAX_DEMOS]}
        state["offsets"] = None
        p.set_state(state | (formats or {}).get(name, {}))
    return new


def shuffled(rows: Sequence[dict], seed: int) -> list[dict]:
    out = list(rows)
    random.Random(seed).shuffle(out)
    return out


def candidate_entry(index: int, kind: str, program: Module, value: float, calls: int) -> dict:
    return {
        "candidate": index,
        "kind": kind,
        "demos": {n: len(p.demos) for n, p in program.named_predictors()},
        "instructions": {n: p.instruction for n, p in program.named_predictors()},
        "formats": {n: {"layout": p.layout, "prefixes": dict(p.prefixes)} for n, p in program.named_predictors()},
        "calibrated": {n: "batch" if p.offsets is not None else p.calibrate for n, p in program.named_predictors()},
        "val_score": round(value, 6),
        "model_calls": calls,
    }


Progress = Callable[[dict, float], None]  # (history entry, best score so far)
