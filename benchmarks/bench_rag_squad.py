"""Retrieval on SQuAD dev: index the unique contexts, ask every question, check the gold context is retrieved.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_rag_squad.py [--data ../shared/data/squad/dev.jsonl]

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

from prompttune.backbone import set_threads
from prompttune.embeddings import load_encoder
from prompttune.rag import VectorIndex, read_documents

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
    t0 = time.perf_counter()
    index = VectorIndex.build(docs, encoder, max_words=args.chunk_words, overlap=args.overlap)
    index_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        index.save(Path(tmp) / "idx")
        index = VectorIndex.load(Path(tmp) / "idx", encoder)
        save_load_s = time.perf_counter() - t1
    questions = [r["question"] for r in rows]
    gold = [doc_of_text[r["context"].strip()] for r in rows]
    t2 = time.perf_counter()
    hits = index.search(questions, k=5)
    query_s = time.perf_counter() - t2
    top1 = sum(h[0].chunk.doc_id == g for h, g in zip(hits, gold, strict=True)) / len(rows)
    top5 = sum(any(x.chunk.doc_id == g for x in h) for h, g in zip(hits, gold, strict=True)) / len(rows)
    load_after = os.getloadavg()
    per_2700 = index_s / len(docs) * 2700
    print(f"data: {args.data}: {len(rows)} questions, {len(docs)} unique contexts -> {len(index)} chunks")
    print(
        f"encoder: {encoder.model_id} ({encoder.model.dtype}), torch threads: {torch.get_num_threads()}, "
        f"cpus: {os.cpu_count()}, load average before/after: {load_before[0]:.2f}/{load_after[0]:.2f}"
    )
    print(f"{'figure':<34}{'measured':>12}{'target':>12}{'ratio':>10}")
    print(f"{'top-5 recall (gold context)':<34}{top5:>12.4f}{TARGET_RECALL5:>12.2f}{top5 / TARGET_RECALL5:>10.3f}")
    print(f"{'top-1 recall':<34}{top1:>12.4f}{'':>12}{'':>10}")
    print(f"{'indexing seconds (all contexts)':<34}{index_s:>12.1f}{'':>12}{'':>10}")
    print(
        f"{'indexing seconds per 2,700 paras':<34}{per_2700:>12.1f}{TARGET_SECONDS_PER_2700:>12.0f}"
        f"{TARGET_SECONDS_PER_2700 / per_2700:>10.2f}x"
    )
    print(f"{'save + load seconds':<34}{save_load_s:>12.2f}")
    print(f"{'queries per second (batched)':<34}{len(rows) / query_s:>12.1f}")
    print(f"{'ms per query (embed + search)':<34}{1000 * query_s / len(rows):>12.2f}")


if __name__ == "__main__":
    main()
