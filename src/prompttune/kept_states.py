"""The states a training run keeps: the ``k`` best validated (moving-averaged) states, ranked by validation value
with a tie going to the later state, and what the run ends with: their element-wise mean (k = 1: the best state
alone). Averaging the best few checkpoints of one run ("checkpoint averaging") smooths the validation noise that
picks any single one of them: on SST-2's 200 validation rows a point is one row (benchmarks/sst2_trajectory.py)."""

from __future__ import annotations

import torch


class KeptStates:
    def __init__(self, k: int = 1):
        if k < 1:
            raise ValueError(f"--average-best {k}: must be at least 1.")
        self.k = k
        self.entries: list[tuple[float, int, dict]] = []  # (value, step, state), best first

    def offer(self, value: float, step: int, state: dict) -> bool:
        """Keep ``state`` (validated at ``step`` with ``value``) if it ranks among the k best; True if it was kept."""
        if len(self.entries) == self.k and (value, step) < self.entries[-1][:2]:
            return False
        self.entries.append((value, step, {name: t.detach().clone() for name, t in state.items()}))
        self.entries.sort(key=lambda e: (e[0], e[1]), reverse=True)
        del self.entries[self.k :]
        return True

    @property
    def steps(self) -> list[int]:
        """The kept states' steps, in training order."""
        return sorted(step for _, step, _ in self.entries)

    def averaged(self) -> dict:
        """The mean of the kept states (floating-point tensors; any other tensor is the best state's)."""
        if not self.entries:
            raise ValueError("no state kept yet")
        best = self.entries[0][2]
        if len(self.entries) == 1:
            return {name: t.clone() for name, t in best.items()}
        out = {}
        for name, t in best.items():
            if t.is_floating_point():
                out[name] = torch.stack([e[2][name].float() for e in self.entries]).mean(0).to(t.dtype)
            else:
                out[name] = t.clone()
        return out

    # --- checkpoints ------------------------------------------------------------------------------
    def to_tensors(self, prefix: str = "kept") -> tuple[dict, list[list]]:
        """Flat tensors and the [value, step] of each kept state, for a checkpoint."""
        tensors = {
            f"{prefix}.{i}.{name}": t.cpu().contiguous()
            for i, (_, _, st) in enumerate(self.entries)
            for name, t in st.items()
        }
        return tensors, [[value, step] for value, step, _ in self.entries]

    def load(self, tensors: dict, ranks: list[list], prefix: str = "kept") -> None:
        """Back from ``to_tensors``' output (tensors already on their device)."""
        states: list[dict] = [{} for _ in ranks]
        for key, t in tensors.items():
            if key.startswith(prefix + "."):
                i, name = key[len(prefix) + 1 :].split(".", 1)
                states[int(i)][name] = t
        self.entries = [(float(v), int(s), st) for (v, s), st in zip(ranks, states, strict=True)][: self.k]
