"""Retrieval on SQuAD dev: index the unique contexts, ask every question, check the gold context is retrieved.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_rag_squad.py [--data ../shared/data/squad/dev.jsonl]

Prints the figures beside the targets (top-5 recall >= 0.90, indexing 2,700 paragraphs <= 120 s) as
ratios, plus top-1 recall, query speed and the load on the machine while it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from prompttune.core.backbone import set_threads
from prompttune.core.embeddings import load_encoder
from prompttune.rag.index import VectorIndex, read_documents

TARGET_RECALL5 = 0.90
TARGET_SECONDS_PER_2700 = 120.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/shared/data/squad/dev.jsonl")
    ap.add_argument("--chunk-words", type=int, default=200)
    ap.add_argument("--overlap", type=int, default=40)
    ap.add_argument("--limit", type=int, default=None, help="ask only the first N questions")
    args = ap.parse_args()
    set_threads()
    rows = [json.loads(line) for line in open(args.data, encoding="utf-8")]
    if args.limit:
        rows = rows[: args.limit]
    docs = read_documents(args.data, text_field="context")  # unique contexts; id = first question's id
    doc_of_text = {d.text: d.id for d in docs}
    load_before = os.getloadavg()
    encoder = load_encoder("minilm")  # loaded before timing: indexing time is chunking + embedding + adding
    t0, cpu0 = time.perf_counter(), time.process_time()
    index = VectorIndex.build(docs, encoder, max_words=args.chunk_words, overlap=args.overlap)
    index_s, index_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        index.save(Path(tmp) / "idx")
        index = VectorIndex.load(Path(tmp) / "idx", encoder)
        save_load_s = time.perf_counter() - t1
    questions = [r["question"] for r in rows]
    gold = [doc_of_text[r["context"].strip()] for r in rows]
    t2 = time.perf_counter()
    vectors = index.embed_queries(questions)
    embed_s = time.perf_counter() - t2
    recall, search_s = {}, {}
    for mode in ("dense", "bm25", "hybrid"):
        t3 = time.perf_counter()
        hits = index.search(questions, k=5, mode=mode, query_vectors=vectors)
        search_s[mode] = time.perf_counter() - t3
        top1 = sum(bool(h) and h[0].chunk.doc_id == g for h, g in zip(hits, gold, strict=True)) / len(rows)
        top5 = sum(any(x.chunk.doc_id == g for x in h) for h, g in zip(hits, gold, strict=True)) / len(rows)
        recall[mode] = (top1, top5)
    load_after = os.getloadavg()
    per_2700 = index_s / len(docs) * 2700
    n = len(rows)
    print(
        f"data: {args.data}: {n} questions, {len(docs)} unique contexts -> {len(index)} chunks "
        f"({args.chunk_words} words, overlap {args.overlap})"
    )
    print(
        f"encoder: {encoder.model_id} ({encoder.model.dtype}), torch threads: {torch.get_num_threads()}, "
        f"cpus: {os.cpu_count()}, load average (1 min) before/after: {load_before[0]:.2f}/{load_after[0]:.2f}"
    )
    print(f"{'figure':<40}{'measured':>10}{'target':>9}{'ratio':>8}")
    for mode, (top1, top5) in recall.items():
        print(f"{'top-5 recall, ' + mode:<40}{top5:>10.4f}{TARGET_RECALL5:>9.2f}{top5 / TARGET_RECALL5:>8.3f}")
        print(f"{'top-1 recall, ' + mode:<40}{top1:>10.4f}")
    dense5, bm5, hyb5 = (recall[m][1] for m in ("dense", "bm25", "hybrid"))
    print(f"{'hybrid vs dense / vs bm25 (top-5)':<40}{hyb5 / dense5:>10.3f}x{hyb5 / bm5:>8.3f}x")
    print(f"{'indexing seconds (all contexts)':<40}{index_s:>10.1f}")
    print(
        f"{'indexing seconds per 2,700 paragraphs':<40}{per_2700:>10.1f}{TARGET_SECONDS_PER_2700:>9.0f}"
        f"{TARGET_SECONDS_PER_2700 / per_2700:>7.2f}x"
    )
    # CPU seconds of this process: with one thread, what the wall time is on an otherwise idle core.
    print(f"{'indexing CPU seconds (all threads)':<40}{index_cpu:>10.1f}")
    print(f"{'CPU seconds per 2,700 paragraphs':<40}{index_cpu / len(docs) * 2700:>10.1f}")
    print(f"{'save + load seconds':<40}{save_load_s:>10.2f}")
    print(f"{'query embedding ms / question (batched)':<40}{1000 * embed_s / n:>10.2f}")
    for mode, sec in search_s.items():
        extra = embed_s if mode != "bm25" else 0.0
        print(f"{'ms / question, ' + mode + ' (embed + search)':<40}{1000 * (sec + extra) / n:>10.2f}")


if __name__ == "__main__":
    main()
