"""The one train / validation / test split every arm of a comparison sees, and its training subsets.

Deterministic from the settings alone, so the runner (for the fingerprint) and every cell's
subprocess (to train) rebuild the same rows without copying any data.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from prompttune.core.data import Dataset, infer_fields, load_rows
from prompttune.core.errors import DataError

SPLIT_SEED = 0  # the split never changes with --seeds; the seeds change init, order and subsets


@dataclass
class Split:
    pool: Dataset  # the training rows subsets are drawn from
    val: Dataset
    test: Dataset

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for part in (self.pool, self.val, self.test):
            h.update(part.fingerprint().encode())
        return "sha256:" + h.hexdigest()[:16]

    def labels(self) -> list[str]:
        """Every label of the pool, sorted: the same verbalizer for every training-set size."""
        return sorted(self.pool.labels())

    def fields(self) -> tuple[str, ...]:
        return infer_fields(self.pool)

    def train(self, size: int | None, seed: int) -> Dataset:
        """The first ``size`` rows of a seeded shuffle of the pool (all of it when size is None)."""
        if size is None:
            return self.pool
        if size > len(self.pool):
            raise DataError(
                f"--train-sizes {size}: only {len(self.pool)} training rows after the validation and test "
                "rows are set apart; use smaller sizes or more data."
            )
        order = list(range(len(self.pool)))
        random.Random(seed).shuffle(order)
        return Dataset([self.pool.rows[i] for i in sorted(order[:size])], self.pool.source)


def make_split(
    data: str | Path, val: str | Path | None, test: str | Path | None, limit: int | None, val_rows: int | None
) -> Split:
    """DATA's first ``limit`` rows, less a seeded test set (20%, unless --test) and validation set (--val-rows)."""
    pool = load_rows(data).limit(limit)
    if test:
        test_ds = load_rows(test)
    else:
        pool, test_ds = pool.split(0.2, SPLIT_SEED)
    if val:
        val_ds = load_rows(val)
    else:
        fraction = (val_rows / len(pool)) if val_rows else 0.1
        if fraction >= 0.5 or len(pool) < 4:
            raise DataError(
                f"{data}: {len(pool)} training rows are too few to set {val_rows or '10%'} apart for validation; "
                "pass --val, lower --val-rows, or give more rows."
            )
        pool, val_ds = pool.split(fraction, SPLIT_SEED)
    return Split(pool, val_ds, test_ds)
