"""Label words of several tokens: in the rows' own pass (inline) against a continuation pass after it.

One training step's forward and backward (prompt tuning, 16 rows a batch, the default decoder), every other
batch of the first 256 rows of a labelled file, three rounds, the two ways interleaved so the machine's drift
falls on both. Prints each round's seconds and the ratio (two passes / inline).

    .venv/bin/python benchmarks/bench_label_words.py ../shared/data/ag_news/train.jsonl [THREADS]
"""

import json
import sys
import time

import torch

import prompttune.scorer as scorer
from prompttune.api import PromptTask
from prompttune.core.backbone import Backbone
from prompttune.core.data import from_records

torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
bb = Backbone.load("smollm2", dtype="auto")
rows = [json.loads(line) for line in open(sys.argv[1])][:256]
labels = sorted({r["label"] for r in rows})
tmpl = "classify-pair" if "text_a" in rows[0] else "classify"
task = PromptTask.create(bb, labels, "prompt-tuning", {"num_virtual_tokens": 20, "init": "labels"}, tmpl, seed=0)
pm = task.model
ids = sorted(pm.encode(from_records(rows)).ids, key=len)
batches = [ids[i : i + 16] for i in range(0, len(ids), 16)]


def step(b):
    pm.method.zero_grad()
    pm.label_scores(b, pm.prefix_kv()).sum().backward()


step(batches[0])
res = {64: [], 0: []}
for _round in range(3):
    for flag in (64, 0):
        scorer.INLINE_TOKENS = flag
        t = time.perf_counter()
        for b in batches[::2]:
            step(b)
        res[flag].append(time.perf_counter() - t)
inline, two = [round(x, 2) for x in res[64]], [round(x, 2) for x in res[0]]
print(f"{sys.argv[1]}: label tokens {pm.max_form_len}; inline {inline} s; two passes {two} s;", end=" ")
print(f"ratio {sum(res[0]) / sum(res[64]):.3f}")
