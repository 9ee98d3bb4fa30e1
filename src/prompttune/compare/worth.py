"""How many training rows is a method worth? (Le Scao & Rush 2021, "How many data points is a prompt worth?")

Each method has a curve: accuracy against the number of training rows. The data advantage of a
method over a reference is the *horizontal* distance between the two curves: at an accuracy both
reach, how many more rows the reference needs. Curves are interpolated linearly in log(rows) and
made non-decreasing (a running maximum: the fewest rows known to reach a level), so each accuracy
level maps to one number of rows. The advantage is averaged over a grid of the accuracy levels both
curves reach (the paper averages the area between the curves over that band the same way).

A method whose accuracy does not depend on the data (zero-shot: a flat line) is worth the rows the
reference needs to reach its accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVELS = 400  # accuracy levels across the shared band (midpoints: the mean is the midpoint rule)


@dataclass
class Curve:
    sizes: list[float]  # training rows, increasing
    accuracy: list[float]

    def __post_init__(self) -> None:
        pairs = sorted(zip(self.sizes, self.accuracy, strict=True))
        self.sizes = [float(n) for n, _ in pairs]
        self.accuracy = [float(a) for _, a in pairs]
        if any(n <= 0 for n in self.sizes):
            raise ValueError("curve sizes must be positive (log scale)")

    @property
    def monotone(self) -> np.ndarray:
        return np.maximum.accumulate(np.array(self.accuracy))

    @property
    def band(self) -> tuple[float, float]:
        m = self.monotone
        return float(m[0]), float(m[-1])

    def rows_for(self, level: float) -> float:
        """The fewest rows at which the (log-interpolated, running-max) curve reaches ``level``."""
        acc, logn = self.monotone, np.log(np.array(self.sizes))
        if level <= acc[0]:
            return self.sizes[0]
        if level > acc[-1]:
            return math.inf
        i = int(np.argmax(acc >= level))  # first point at or above the level; acc[i-1] < level
        a0, a1 = acc[i - 1], acc[i]
        t = (level - a0) / (a1 - a0)
        return float(math.exp(logn[i - 1] + t * (logn[i] - logn[i - 1])))


def advantage(method: Curve, reference: Curve) -> dict | None:
    """The method's data advantage over the reference across the accuracy levels both reach.

    rows: mean over levels of (reference rows - method rows), positive when the method needs fewer;
    ratio: geometric mean of reference rows / method rows. None when the bands do not overlap.
    """
    lo = max(method.band[0], reference.band[0])
    hi = min(method.band[1], reference.band[1])
    if hi - lo <= 1e-9:
        return None
    levels = lo + (np.arange(LEVELS) + 0.5) * (hi - lo) / LEVELS
    n_m = np.array([method.rows_for(a) for a in levels])
    n_r = np.array([reference.rows_for(a) for a in levels])
    return {
        "rows": float(np.mean(n_r - n_m)),
        "ratio": float(np.exp(np.mean(np.log(n_r / n_m)))),
        "accuracy_band": [float(lo), float(hi)],
    }


def constant_worth(accuracy: float, reference: Curve) -> dict:
    """A data-independent method (a flat line) is worth the rows the reference needs to match it."""
    lo, hi = reference.band
    if accuracy < lo:
        return {"rows": None, "below_rows": reference.sizes[0], "accuracy": accuracy}
    if accuracy > hi:
        return {"rows": None, "above_rows": reference.sizes[-1], "accuracy": accuracy}
    return {"rows": reference.rows_for(accuracy), "accuracy": accuracy}


def describe(entry: dict) -> str:
    """One human line for a worth entry (used by the Markdown and HTML reports)."""
    if "ratio" in entry:
        lo, hi = entry["accuracy_band"]
        band = f"at accuracy {lo:.3f}-{hi:.3f}"
        rows = f"{abs(entry['rows']):,.0f} {'fewer' if entry['rows'] >= 0 else 'more'} rows"
        ratio = f"{entry['ratio']:.2f}x fewer" if entry["ratio"] >= 1 else f"{1 / entry['ratio']:.2f}x as many"
        return f"needs {rows} ({ratio}) {band}"
    if entry.get("rows") is not None:
        return f"worth {entry['rows']:,.0f} rows of the reference (its accuracy {entry['accuracy']:.3f})"
    if "below_rows" in entry:
        return f"below the reference at {entry['below_rows']:,.0f} rows: worth fewer than that"
    return f"above the reference at {entry['above_rows']:,.0f} rows: worth more than that"
