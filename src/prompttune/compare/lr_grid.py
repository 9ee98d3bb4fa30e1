"""A fair grid (``compare --lr-grid``): every trainable arm trains at several learning rates, each run with its own
early stopping within the same step budget, and keeps the rate that does best on validation. The report shows
the rate chosen per arm; the test set is read only for the chosen run's score.

``--lr-grid 3``: three rates around each arm's own default (x 10^-0.5, x 1, x 10^0.5); ``--lr-grid 0.003,0.01,0.03``:
those rates for every trainable arm. Each rate is a cell of its own (its own key in ``cells/``), so the grid
resumes, and runs in parallel under ``--executor ray``.
"""

from __future__ import annotations

import math
from dataclasses import replace

from prompttune.compare.arms import Arm
from prompttune.core.errors import PromptTuneError

MAX_GRID = 12  # learning rates per arm, at most
GRID_PATIENCE = 3  # validations without improvement before a grid run stops
GRID_VALIDATIONS = 10  # validations in a grid run's step budget


def parse(spec: str | None) -> int | list[float] | None:
    """None (no grid), a count of rates around each arm's default, or explicit rates; errors name the flag."""
    if spec is None or not spec.strip():
        return None
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if len(parts) == 1 and parts[0].isdigit():
        n = int(parts[0])
        if not 2 <= n <= MAX_GRID:
            raise PromptTuneError(f"--lr-grid {spec}: give 2 to {MAX_GRID} rates (a count, or the rates themselves).")
        return n
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise PromptTuneError(
            f"--lr-grid {spec}: give a count (3) or rates separated by commas (0.003,0.01)."
        ) from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise PromptTuneError(f"--lr-grid {spec}: every rate must be a positive finite number.")
    if len(set(values)) != len(values) or not 2 <= len(values) <= MAX_GRID:
        raise PromptTuneError(f"--lr-grid {spec}: give 2 to {MAX_GRID} different rates.")
    return sorted(values)


def trains(arm: Arm) -> bool:
    """Whether the arm has a learning rate to choose (soft prompts, LoRA, full fine-tuning)."""
    return arm.kind != "hard prompt" and arm.harness("lr") is not None


def rates(arm: Arm, grid: int | list[float]) -> list[float]:
    if isinstance(grid, list):
        return grid
    default = float(arm.harness("lr"))
    return [float(f"{default * 10 ** ((i - (grid - 1) / 2) / 2):.3g}") for i in range(grid)]


def expand(arms: list[Arm], grid: int | list[float] | None, max_steps: int) -> list[Arm]:
    """The arms to run: each trainable arm once per rate (validated often enough to stop early), the rest as they
    are. The same name, so each arm's runs are grouped back by ``choose``."""
    if grid is None:
        return arms
    out = []
    for arm in arms:
        if not trains(arm):
            out.append(arm)
            continue
        steps = int(arm.harness("max_steps", max_steps))
        stop = {"eval_every": max(1, steps // GRID_VALIDATIONS), "patience": GRID_PATIENCE}
        for lr in rates(arm, grid):
            out.append(replace(arm, options={**stop, **arm.options, "lr": lr}))
    return out


def choose(records: list[dict]) -> tuple[list[dict], dict[str, list[dict]]]:
    """(one record per arm, seed and size: the rate with the best validation score; {arm: what each seed and
    size chose among which rates}). Ties go to the first rate listed (the smallest). Records of arms without a
    grid pass through unchanged."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["arm"]["name"], r["seed"], r["train_size"]), []).append(r)
    chosen, table = [], {}
    for (name, seed, size), recs in groups.items():
        if len(recs) == 1:
            chosen.append(recs[0])
            continue
        ok = [r for r in recs if r.get("status") == "ok"]
        best = max(ok, key=lambda r: r.get("best_val_accuracy") or 0.0) if ok else recs[0]
        grid = [
            {
                "lr": r["arm"]["options"]["lr"],
                "status": r.get("status"),
                "best_val_accuracy": r.get("best_val_accuracy"),
                "steps": r.get("steps"),
                "best_step": r.get("best_step"),
            }
            for r in recs
        ]
        total = sum(r.get("train_seconds") or 0.0 for r in recs)
        chosen.append(best | {"lr": best["arm"]["options"]["lr"], "lr_grid": grid, "grid_train_seconds": total})
        table.setdefault(name, []).append({"seed": seed, "train_size": size, "lr": chosen[-1]["lr"], "grid": grid})
    return chosen, table


def describe(table: dict[str, list[dict]]) -> str:
    """One line for the report's header: the rate each arm chose (per seed where they differ)."""
    if not table:
        return ""
    parts = []
    for name, picks in table.items():
        values = sorted({p["lr"] for p in picks})
        shown = f"{values[0]:g}" if len(values) == 1 else ", ".join(f"seed {p['seed']}: {p['lr']:g}" for p in picks)
        grid = ", ".join(f"{g['lr']:g}" for g in picks[0]["grid"])
        parts.append(f"{name} {shown} (of {grid})")
    return "; learning rate chosen on validation: " + "; ".join(parts)
