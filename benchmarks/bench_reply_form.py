"""A program step's reply held to its form (``programs/reply_form.py``) on the default decoder: GSM8K word
problems through ``ChainOfThought("question -> answer: number")`` (reasoning, then a number), and SST-2 reviews
through ``Predict("text -> sentiment: one of positive, negative; confidence: number")`` (two typed outputs,
so the label is generated, not chosen by score), each way on the same rows, greedy, no retries.

Prints per program and way: replies that parse, accuracy, seconds.

    .venv/bin/python benchmarks/bench_reply_form.py [ROWS (20)]
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from prompttune import Backbone
from prompttune.programs import BackboneLM, ChainOfThought, OutputParseError, Predict, Signature, using

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class Unheld(BackboneLM):
    """The same LM, the prompt's form dropped: the reply is free text, parsed afterwards."""

    def complete(self, prompt, max_tokens):
        return super().complete(replace(prompt, form=None), max_tokens)


def run(step, rows, key, gold, lm) -> tuple[int, int, float]:
    parsed = right = 0
    t = time.perf_counter()
    with using(lm):
        for r in rows:
            try:
                out = step(**{key: r[key]})
            except OutputParseError:
                continue
            parsed += 1
            right += gold(out, r)
    return parsed, right, time.perf_counter() - t


def main(n: int = 20) -> None:
    backbone = Backbone.load()
    math = [json.loads(x) for x in open(DATA / "gsm8k" / "train.jsonl")][:n]
    math = [{"question": r["input"], "answer": float(r["final_answer"].replace(",", ""))} for r in math]
    sst = [json.loads(x) for x in open(DATA / "sst2" / "train.jsonl")][:n]
    programs = [
        ("CoT question -> answer: number (GSM8K)", ChainOfThought(Signature.parse("question -> answer: number"),
         max_retries=0, max_tokens=160), math, "question", lambda o, r: float(o.answer) == r["answer"]),
        ("text -> sentiment, confidence: number (SST-2)", Predict(Signature.parse(
            "text -> sentiment: one of positive, negative; confidence: number"), max_retries=0, max_tokens=24),
         sst, "text", lambda o, r: o.sentiment == r["label"]),
    ]  # fmt: skip
    print("| program | way | parsed | accuracy | seconds |")
    print("|---|---|---|---|---|")
    for name, step, rows, key, gold in programs:
        for way, lm in (("free text, parsed", Unheld(backbone)), ("held to the form", BackboneLM(backbone))):
            parsed, right, seconds = run(step, rows, key, gold, lm)
            print(f"| {name} | {way} | {parsed}/{len(rows)} | {right / len(rows):.2f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
