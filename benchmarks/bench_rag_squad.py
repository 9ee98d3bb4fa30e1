"""Retrieval on SQuAD dev: tune the hybrid fusion on one half of the articles, choose on the other.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_rag_squad.py [--data ../shared/data/squad/dev.jsonl]

The articles (titles) are shuffled with a fixed seed and split in two halves; each half gets its own
index (its unique paragraphs), so the held-out half's paragraphs and questions are never seen while
tuning. On the tuning half, weighted reciprocal-rank fusion (a grid of dense weights and RRF
constants) and min-max normalised convex combination (a grid of weights) are scored by recall@1 +
recall@5; the best of each, the previous default (RRF 60, equal weights), dense and BM25 are then
measured on both halves through ``VectorIndex.search`` (hits collapsed per document, as by default).
Also printed: how often the top 5 holds one paragraph twice without the collapse, and timings.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np

from prompttune.core.backbone import set_threads
from prompttune.core.embeddings import load_encoder
from prompttune.rag.documents import Document
from prompttune.rag.fusion import DEFAULT_FUSION, Fusion, best_per_document
from prompttune.rag.index import VectorIndex

DEPTH = 100  # candidates per ranking while tuning (what search fetches for k <= 10)
WEIGHTS = [round(0.05 * i, 2) for i in range(21)]
RRF_KS = (1, 2, 5, 10, 20, 60, 100)


class Half:
    """One half of the articles: its index, questions, gold paragraphs and raw rankings."""

    def __init__(self, name: str, rows: list[dict], encoder, chunk_words: int, overlap: int):
        self.name = name
        docs: dict[str, Document] = {}
        for r in rows:
            text = r["context"].strip()
            docs.setdefault(text, Document(r["id"], r["title"], text))
        self.docs = len(docs)
        t0, cpu0 = time.perf_counter(), time.process_time()
        self.index = VectorIndex.build(list(docs.values()), encoder, max_words=chunk_words, overlap=overlap)
        self.index_s, self.index_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        self.questions = [r["question"] for r in rows]
        self.gold = [docs[r["context"].strip()].id for r in rows]
        t1 = time.perf_counter()
        self.vectors = self.index.embed_queries(self.questions)
        self.embed_s = time.perf_counter() - t1
        self.rankings = self.index.rankings(self.questions, min(DEPTH, len(self.index)), "hybrid", self.vectors)

    def doc(self, row: int) -> str:
        return self.index.chunks[row].doc_id

    def recall_offline(self, fusion: Fusion) -> tuple[float, float]:
        """recall@1, recall@5 from the cached rankings (the tuning grid)."""
        top1 = top5 = 0
        for (dense, lexical), gold in zip(self.rankings, self.gold, strict=True):
            docs = [self.doc(r) for r, _ in best_per_document(fusion.fuse(dense, lexical), self.doc, 5)]
            top1 += bool(docs) and docs[0] == gold
            top5 += gold in docs
        return top1 / len(self.gold), top5 / len(self.gold)

    def recall(self, mode: str, fusion: Fusion = DEFAULT_FUSION, collapse: bool = True) -> tuple[float, float, float]:
        """recall@1, recall@5 and the share of questions whose top 5 repeats a paragraph, via search."""
        hits = self.index.search(
            self.questions, k=5, mode=mode, query_vectors=self.vectors, fusion=fusion, collapse=collapse
        )
        docs = [[h.chunk.doc_id for h in hs] for hs in hits]
        top1 = sum(bool(d) and d[0] == g for d, g in zip(docs, self.gold, strict=True))
        top5 = sum(g in d for d, g in zip(docs, self.gold, strict=True))
        repeats = sum(len(set(d)) < len(d) for d in docs)
        n = len(self.gold)
        return top1 / n, top5 / n, repeats / n


def tune(half: Half) -> dict[str, tuple[Fusion, tuple[float, float]]]:
    """The best fusion of each kind on ``half`` by recall@1 + recall@5 (ties: the first in grid order)."""
    grids = {
        "rrf": [Fusion("rrf", w, k) for k in RRF_KS for w in WEIGHTS[::2]],
        "convex": [Fusion("convex", w) for w in WEIGHTS],
    }
    best = {}
    for name, grid in grids.items():
        scored = [(f, half.recall_offline(f)) for f in grid]
        best[name] = max(scored, key=lambda item: item[1][0] + item[1][1])
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/shared/data/squad/dev.jsonl")
    ap.add_argument("--chunk-words", type=int, default=200)
    ap.add_argument("--overlap", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0, help="shuffles the articles before halving")
    args = ap.parse_args()
    if not Path(args.data).is_file():
        raise SystemExit(f"{args.data}: missing; this benchmark reads SQuAD dev from ../shared/data (see its README).")
    set_threads()
    rows = [json.loads(line) for line in open(args.data, encoding="utf-8")]
    titles = sorted({r["title"] for r in rows})
    random.Random(args.seed).shuffle(titles)
    first = set(titles[: len(titles) // 2])
    load_before = os.getloadavg()
    encoder = load_encoder("minilm")
    halves = [
        Half("tuning", [r for r in rows if r["title"] in first], encoder, args.chunk_words, args.overlap),
        Half("held-out", [r for r in rows if r["title"] not in first], encoder, args.chunk_words, args.overlap),
    ]
    tuned, check = tune(halves[0]), tune(halves[1])
    print(
        f"data: {args.data}; articles shuffled (seed {args.seed}) and halved; "
        f"chunks of {args.chunk_words} words, overlap {args.overlap}"
    )
    for h in halves:
        print(f"  {h.name}: {len(h.gold)} questions, {h.docs} paragraphs -> {len(h.index)} chunks")
    for name, (f, (r1, r5)) in tuned.items():
        other = check[name][0]
        print(
            f"tuned {name} on the tuning half: dense weight {f.dense_weight}"
            + (f", rrf_k {f.rrf_k}" if name == "rrf" else "")
            + f" (recall@1 {r1:.3f}, @5 {r5:.3f}); tuned on the held-out half instead: {other.dense_weight}"
            + (f", rrf_k {other.rrf_k}" if name == "rrf" else "")
        )
    arms = [
        ("dense", "dense", DEFAULT_FUSION),
        ("bm25", "bm25", DEFAULT_FUSION),
        ("hybrid, RRF 60, w 0.5 (before)", "hybrid", Fusion("rrf", 0.5, 60)),
        (f"hybrid, RRF {tuned['rrf'][0].rrf_k}, w {tuned['rrf'][0].dense_weight}", "hybrid", tuned["rrf"][0]),
        (f"hybrid, convex, w {tuned['convex'][0].dense_weight}", "hybrid", tuned["convex"][0]),
        (f"hybrid, default: {DEFAULT_FUSION.method}, w {DEFAULT_FUSION.dense_weight}", "hybrid", DEFAULT_FUSION),
    ]
    print(f"\n{'arm':<44}" + "".join(f"{h.name + ' @1':>14}{h.name + ' @5':>14}" for h in halves))
    for label, mode, fusion in arms:
        cells = [h.recall(mode, fusion)[:2] for h in halves]
        print(f"{label:<44}" + "".join(f"{r1:>14.3f}{r5:>14.3f}" for r1, r5 in cells))
    print("\ntop 5 holding one paragraph twice (default hybrid), without / with the per-document collapse:")
    for h in halves:
        print(
            f"  {h.name}: {h.recall('hybrid', collapse=False)[2]:.3f} / {h.recall('hybrid')[2]:.3f}"
            f" (recall@5 {h.recall('hybrid', collapse=False)[1]:.3f} / {h.recall('hybrid')[1]:.3f})"
        )
    n_docs = sum(h.docs for h in halves)
    index_s, index_cpu = sum(h.index_s for h in halves), sum(h.index_cpu for h in halves)
    n_q = sum(len(h.gold) for h in halves)
    t0 = time.perf_counter()
    for h in halves:
        h.index.search(h.questions, k=5, query_vectors=h.vectors)
    search_ms = 1000 * (time.perf_counter() - t0) / n_q
    print(
        f"\nindexing {n_docs} paragraphs: {index_s:.1f} s wall, {index_cpu:.1f} CPU s "
        f"({index_cpu / n_docs * 2700:.1f} CPU s per 2,700); query embedding "
        f"{1000 * sum(h.embed_s for h in halves) / n_q:.2f} ms/question (batched); hybrid search {search_ms:.2f} "
        f"ms/question; load average before/after {load_before[0]:.2f}/{os.getloadavg()[0]:.2f}; "
        f"cpus {os.cpu_count()}, numpy {np.__version__}"
    )


if __name__ == "__main__":
    main()
