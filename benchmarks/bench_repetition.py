"""Repetition settings of GenerationConfig on the default decoder (greedy, 96 tokens).

8 SQuAD questions (the first of each of 8 titles in ../shared/data/squad/dev.jsonl) through the ``rag``
template with their passage, and 4 chat prompts. Prints, per setting: repeated word 4-grams per output,
outputs at the token limit, and rag answers containing a gold answer span.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_repetition.py [squad dev.jsonl]
"""

import json
import sys
import time

from prompttune import Backbone
from prompttune.core.generate import GenerationConfig, Generator

SETTINGS = [("plain", 1.0, 0), ("ng3", 1.0, 3), ("ng4", 1.0, 4), ("rp1.1+ng4", 1.1, 4), ("rp1.1", 1.1, 0)]
CHAT = ["Write a short story about a cat.", "Explain what photosynthesis is.", "List three uses of a brick."]
CHAT += ["Describe your ideal weekend."]


def repeated_4grams(text: str) -> float:
    words = text.split()
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return (len(grams) - len(set(grams))) / max(1, len(grams))


def main(path: str = "../shared/data/squad/dev.jsonl") -> None:
    backbone = Backbone.load()
    gen = Generator(backbone)
    titles, qa = set(), []
    for line in open(path, encoding="utf-8"):
        row = json.loads(line)
        if row["title"] not in titles and len(qa) < 8:
            titles.add(row["title"])
            qa.append(row)
    prompts = [("rag", {"question": r["question"], "context": f"[1] ({r['title']}) {r['context']}"}, r) for r in qa]
    chat = {"system": "You are a helpful assistant.", "user": "{{ text }}"}
    prompts += [(chat, {"text": t}, None) for t in CHAT]
    for name, penalty, ngram in SETTINGS:
        t0, rep, full, hit = time.perf_counter(), 0.0, 0, 0
        config = GenerationConfig(max_new_tokens=96, repetition_penalty=penalty, no_repeat_ngram_size=ngram)
        for template, values, row in prompts:
            out = gen.complete(template, values, config)
            rep += repeated_4grams(out)
            full += len(backbone.tokenize(out)) >= 95
            hit += bool(row) and any(a.lower() in out.lower() for a in row["answers"])
        print(
            f"{name}: repeated 4-grams {rep / len(prompts):.3f}, at the token limit {full}/{len(prompts)}, "
            f"rag answers with the gold span {hit}/{len(qa)}, {time.perf_counter() - t0:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
