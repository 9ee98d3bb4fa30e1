"""mipro's search over (format, instruction, demo set): Optuna's TPE sampler, as MIPROv2 uses.

Each dimension is a categorical index. The first trial is the first of each (the best screened format, the
program's own instruction, the labeled demo set); then TPE (seeded, so a rerun proposes the same trials, which
is what lets a killed search resume from its journal) proposes the next from the scores so far. A choice
already scored is told its score again and not counted, so ``budget`` distinct candidates are scored.
"""

from __future__ import annotations

import math
from collections.abc import Callable

MAX_ASKS_PER_TRIAL = 20  # TPE proposing only choices already scored: stop after this many asks per trial


def tpe_search(sizes: dict[str, int], budget: int, seed: int, objective: Callable[..., float]) -> None:
    """Call ``objective(*indices)`` on up to ``budget`` distinct index tuples chosen by TPE."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, min(10, budget // 3)))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial({name: 0 for name in sizes})
    seen: dict[tuple[int, ...], float] = {}
    target = min(budget, math.prod(sizes.values()))
    asks = 0
    while len(seen) < target and asks < MAX_ASKS_PER_TRIAL * budget:
        asks += 1
        trial = study.ask()
        choice = tuple(trial.suggest_categorical(name, list(range(n))) for name, n in sizes.items())
        if choice not in seen:
            seen[choice] = objective(*choice)
        study.tell(trial, seen[choice])
