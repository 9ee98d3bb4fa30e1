"""A BM25 keyword index (bm25s: sparse matrices, saved as JSON + .npy without pickle).

It sits beside the dense index: questions that share rare words (names, numbers) with a passage are
found by words as well as by meaning; the two rankings are fused by reciprocal rank.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

STOPWORDS = "en"


def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def _tokenize(texts: list[str]):
    import bm25s

    return bm25s.tokenize(texts, stopwords=STOPWORDS, stemmer=_stemmer(), show_progress=False)


class LexicalIndex:
    def __init__(self, retriever, size: int):
        self.retriever = retriever
        self.size = size

    @classmethod
    def build(cls, texts: list[str]) -> LexicalIndex:
        import bm25s

        retriever = bm25s.BM25()
        retriever.index(_tokenize(texts), show_progress=False)
        return cls(retriever, len(texts))

    def save(self, folder: Path) -> None:
        self.retriever.save(str(folder), allow_pickle=False)

    @classmethod
    def load(cls, folder: Path, size: int) -> LexicalIndex:
        import bm25s

        return cls(bm25s.BM25.load(str(folder), load_corpus=False, allow_pickle=False), size)

    def search(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        """(row, BM25 score) of up to ``k`` rows per query, best first; rows without a shared word left out."""
        k = min(k, self.size)
        rows, scores = self.retriever.retrieve(_tokenize(queries), k=k, show_progress=False, n_threads=0)
        rows, scores = np.asarray(rows), np.asarray(scores)
        return [
            [(int(r), float(s)) for r, s in zip(rrow, srow, strict=True) if s > 0]
            for rrow, srow in zip(rows, scores, strict=True)
        ]
