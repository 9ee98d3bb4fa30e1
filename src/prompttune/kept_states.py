"""The states a training run keeps: the ``k`` best validated (moving-averaged) states, ranked by validation value,
a tie going to the lower validation loss where the objective reports one, else to the later state; and what the
run ends with: their element-wise mean (k = 1: the best state alone). Averaging the best few checkpoints of one run
("checkpoint averaging") smooths the validation noise that picks any single one of them: on SST-2's 200
validation rows a point of accuracy is one row (benchmarks/sst2_trajectory.py).

Only states within ``within`` of the best join the mean (``standard_error``: one standard error of the best's
validation value, the "one-SE" rule); a state further below is a worse state, not noise around the best. On
DBpedia-14 a run the time budget stopped while it still climbed kept steps 28 / 56 / 80 at 0.48 / 0.79 / 0.89: their
mean validated 0.775 and scored 0.792 held-out, where the step-80 state alone validated 0.89."""

from __future__ import annotations

import math

import torch


def standard_error(value: float, rows: int | None) -> float | None:
    """One standard error of a validation value that is a mean over ``rows`` rows of [0, 1] scores:
    sqrt(p (1 - p) / n), the largest such a mean can have (exact for accuracy), and at least one row's worth
    (1 / n); None when the rows are not known."""
    if not rows:
        return None
    p = min(1.0, max(0.0, value))
    return max(math.sqrt(p * (1 - p) / rows), 1 / rows)


class KeptStates:
    def __init__(self, k: int = 1, within: float | None = None):
        if k < 1:
            raise ValueError(f"--average-best {k}: must be at least 1.")
        self.k = k
        self.within = within  # a state joins the mean only this close to the best's value (None: every kept state)
        self.entries: list[tuple[float, int, dict, float | None]] = []  # (value, step, state, loss), best first

    @staticmethod
    def _rank(entry: tuple) -> tuple:
        value, step, _, loss = entry
        return (value, -loss if loss is not None else 0.0, step)

    def offer(self, value: float, step: int, state: dict, loss: float | None = None) -> bool:
        """Keep ``state`` (validated at ``step`` with ``value`` and ``loss``) if it ranks among the k best; True if
        it was kept."""
        if len(self.entries) == self.k and self._rank((value, step, None, loss)) < self._rank(self.entries[-1]):
            return False
        self.entries.append((value, step, {name: t.detach().clone() for name, t in state.items()}, loss))
        self.entries.sort(key=self._rank, reverse=True)
        del self.entries[self.k :]
        return True

    @property
    def best(self) -> tuple[float, int]:
        """(value, step) of the best kept state."""
        return self.entries[0][0], self.entries[0][1]

    @property
    def steps(self) -> list[int]:
        """The averaged states' steps, in training order."""
        return sorted(e[1] for e in self.averaged_entries)

    @property
    def averaged_entries(self) -> list[tuple]:
        """The kept states that are averaged: those within ``within`` of the best's value, except that the untrained
        start (step 0) is never mixed into trained states (it is kept alone only when nothing beat it)."""
        if self.entries and self.entries[0][1] != 0:
            best = self.entries[0][0]
            close = [e for e in self.entries if self.within is None or e[0] >= best - self.within]
            return [e for e in close if e[1] != 0]
        return self.entries[:1]

    def best_state(self) -> dict:
        return {name: t.clone() for name, t in self.entries[0][2].items()}

    def averaged(self) -> dict:
        """The mean of the averaged states (floating-point tensors that differ between them; any other tensor, e.g.
        a frozen part, is the best state's, bit for bit)."""
        if not self.entries:
            raise ValueError("no state kept yet")
        entries = self.averaged_entries
        out = self.best_state()
        for name, t in out.items():
            if t.is_floating_point() and any(not torch.equal(e[2][name], t) for e in entries[1:]):
                out[name] = torch.stack([e[2][name].float() for e in entries]).mean(0).to(t.dtype)
        return out

    # --- checkpoints ------------------------------------------------------------------------------
    def to_tensors(self, prefix: str = "kept") -> tuple[dict, list[list]]:
        """Flat tensors and the [value, step, loss] of each kept state, for a checkpoint."""
        tensors = {
            f"{prefix}.{i}.{name}": t.cpu().contiguous()
            for i, entry in enumerate(self.entries)
            for name, t in entry[2].items()
        }
        return tensors, [[value, step, loss] for value, step, _, loss in self.entries]

    def load(self, tensors: dict, ranks: list[list], prefix: str = "kept") -> None:
        """Back from ``to_tensors``' output (tensors already on their device)."""
        states: list[dict] = [{} for _ in ranks]
        for key, t in tensors.items():
            if key.startswith(prefix + "."):
                i, name = key[len(prefix) + 1 :].split(".", 1)
                states[int(i)][name] = t
        self.entries = [
            (float(r[0]), int(r[1]), st, None if len(r) < 3 or r[2] is None else float(r[2]))
            for r, st in zip(ranks, states, strict=True)
        ][: self.k]
