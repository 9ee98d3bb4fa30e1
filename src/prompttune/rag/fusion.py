"""Hybrid ranking: fuse the dense and BM25 rankings into one, then keep the best window per document.

Two fusions, both with a weight ``w`` for the dense ranking (BM25 gets ``1 - w``):
- ``rrf``: weighted reciprocal rank fusion, ``w / (rrf_k + rank_dense) + (1 - w) / (rrf_k + rank_bm25)``
  (Cormack et al., 2009, with weights); a row missing from a ranking gets nothing from it.
- ``convex``: each ranking's scores min-max normalised over the rows it returned, then
  ``w * dense + (1 - w) * bm25``; a row missing from a ranking scores 0 there.

The default (``DEFAULT_FUSION``) was chosen on SQuAD: tuned on one half of the articles, chosen on the
other half (benchmarks/bench_rag_squad.py, the README's retrieval section).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prompttune.core.errors import DataError

Ranking = list[tuple[int, float]]  # (row, score), best first
METHODS = ("rrf", "convex")


@dataclass(frozen=True)
class Fusion:
    method: str = "convex"
    dense_weight: float = 0.45
    rrf_k: int = 60  # reciprocal rank fusion's constant (60 in Cormack et al.)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DataError(f"fusion {self.method!r}: not a fusion; use one of {', '.join(METHODS)}.")
        if not 0.0 <= self.dense_weight <= 1.0:
            raise DataError(
                f"--dense-weight {self.dense_weight}: give a weight between 0 (BM25 only) and 1 (dense only)."
            )
        if not 1 <= self.rrf_k <= 10_000:
            raise DataError(f"rrf_k {self.rrf_k}: give a constant between 1 and 10000.")

    def fuse(self, dense: Ranking, lexical: Ranking) -> Ranking:
        """Every row of either ranking with its fused score, best first (ties: the dense order, then BM25's)."""
        w = self.dense_weight
        if self.method == "rrf":
            parts = [(dense, w, _reciprocal(self.rrf_k)), (lexical, 1.0 - w, _reciprocal(self.rrf_k))]
        else:
            parts = [(dense, w, _min_max(dense)), (lexical, 1.0 - w, _min_max(lexical))]
        fused: dict[int, float] = {}
        for ranking, weight, score in parts:
            for rank, (row, value) in enumerate(ranking, 1):
                fused[row] = fused.get(row, 0.0) + weight * score(rank, value)
        return sorted(fused.items(), key=lambda item: -item[1])


def _reciprocal(k: int) -> Callable[[int, float], float]:
    return lambda rank, _: 1.0 / (k + rank)


def _min_max(ranking: Ranking) -> Callable[[int, float], float]:
    if not ranking:
        return lambda rank, value: 0.0
    values = [v for _, v in ranking]
    low, high = min(values), max(values)
    span = high - low
    return lambda rank, value: (value - low) / span if span > 0 else 1.0


# Chosen on SQuAD dev (benchmarks/bench_rag_squad.py): tuned on 12 articles, the convex fusion (best weight
# 0.45) beat weighted RRF (best: rrf_k 5, w 0.3), BM25 and dense on the other 12 at recall@1 and @5.
DEFAULT_FUSION = Fusion("convex", 0.45)


def best_per_document(ranking: Ranking, doc_of_row: Callable[[int], str], k: int) -> Ranking:
    """The first ``k`` rows of ``ranking`` from distinct documents: overlapping windows of one long
    document would otherwise fill the top ``k`` with the same passage."""
    seen: set[str] = set()
    kept: Ranking = []
    for row, score in ranking:
        doc = doc_of_row(row)
        if doc not in seen:
            seen.add(doc)
            kept.append((row, score))
            if len(kept) == k:
                break
    return kept
