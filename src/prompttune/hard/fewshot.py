"""Few-shot demonstrations: which training rows a hard prompt shows before each input.

- ``fixed``: the pool's first rows, taking the labels in turn so each label is shown;
- ``random``: seeded, label-balanced;
- ``knn``: per input, the k pool rows nearest to it by sentence embedding (the default encoder,
  MiniLM, through ``embeddings.embed_texts``), the nearest placed last, next to the input.

Fixed and random demos are the same for every row, so they sit in the cached constant prefix and cost
nothing per row; knn demos differ per row, so each row pays for its own demos.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np

from prompttune.core.data import Dataset, Row
from prompttune.core.errors import PromptTuneError

SELECTORS = ("fixed", "random", "knn")
Embed = Callable[[list[str]], np.ndarray]


def as_demo(row: Row, fields: Sequence[str]) -> dict:
    return {**{f: row.fields[f] for f in fields}, "label": row.label}


def _balanced(by_label: dict[str, list[Row]], k: int) -> list[Row]:
    picked: list[Row] = []
    while len(picked) < k and any(by_label.values()):
        for rows in by_label.values():
            if rows and len(picked) < k:
                picked.append(rows.pop(0))
    return picked


def select_fixed(pool: Dataset, fields: Sequence[str], k: int) -> list[dict]:
    by_label: dict[str, list[Row]] = {}
    for row in pool.rows:
        by_label.setdefault(row.label, []).append(row)
    return [as_demo(r, fields) for r in _balanced(by_label, k)]


def select_random(pool: Dataset, fields: Sequence[str], k: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    by_label: dict[str, list[Row]] = {}
    for row in pool.rows:
        by_label.setdefault(row.label, []).append(row)
    for rows in by_label.values():
        rng.shuffle(rows)
    picked = _balanced(dict(sorted(by_label.items())), k)
    rng.shuffle(picked)
    return [as_demo(r, fields) for r in picked]


def row_text(fields: dict, names: Sequence[str]) -> str:
    return "\n".join(str(fields[n]) for n in names)


class NearestDemos:
    """The k pool rows nearest each query row, by cosine similarity of sentence embeddings."""

    def __init__(self, pool: Dataset, fields: Sequence[str], k: int, embed: Embed | None = None):
        self.pool, self.fields, self.k = pool, list(fields), k
        self.embed = embed or _default_embed
        self.pool_vectors = self.embed([row_text(r.fields, self.fields) for r in pool.rows])

    def indices(self, rows: Sequence[Row], skip: Sequence[int | None] | None = None) -> list[list[int]]:
        """Per row, the k nearest pool rows, nearest last; ``skip[i]``: a pool row row i must not get (itself)."""
        queries = self.embed([row_text(r.fields, self.fields) for r in rows])
        sims = np.array(queries @ self.pool_vectors.T, dtype=np.float64)  # (n_rows, n_pool)
        k = min(self.k, len(self.pool.rows))
        if skip is not None:
            for i, j in enumerate(skip):
                if j is not None:
                    sims[i, j] = -np.inf
            k = min(k, len(self.pool.rows) - 1) if any(j is not None for j in skip) else k
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return [list(reversed(t.tolist())) for t in top]  # nearest last: right before the input

    def demos(self, indices: Sequence[int]) -> list[dict]:
        return [as_demo(self.pool.rows[i], self.fields) for i in indices]


def _default_embed(texts: list[str]) -> np.ndarray:
    from prompttune.core.embeddings import embed_texts

    return embed_texts(texts, model="minilm")


def select(pool: Dataset, fields: Sequence[str], k: int, selector: str, seed: int = 0) -> list[dict]:
    """The demos for fixed / random selection (the same for every row)."""
    if selector == "fixed":
        return select_fixed(pool, fields, k)
    if selector == "random":
        return select_random(pool, fields, k, seed)
    raise PromptTuneError(f"--demo-selector {selector!r}: choose one of {', '.join(SELECTORS)}.")
