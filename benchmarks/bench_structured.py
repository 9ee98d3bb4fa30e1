"""Structured output's cost and effect on the default decoder: the server's batched loop (``serve.decode``) on
16 SST-2 reviews asking for a JSON answer ``{"label": "positive"|"negative", "sure": true|false}``, free and held
to the schema (``response_format``), greedy, 48 tokens at most; and held to the schema with a beam search of 3
beams (each beam its own grammar state; rows decoded one at a time, as the server decodes beam requests).

Prints, per way: seconds for the batch, generated tokens, ms per token-step of the batch, how many replies
parse as JSON valid under the schema, and how many give the review's gold label; then the grammar's one-time
cost (llguidance's view of the tokenizer) and its cost per row and step (the mask).

    .venv/bin/python benchmarks/bench_structured.py [../shared/data/sst2/train.jsonl]
"""

from __future__ import annotations

import json
import sys
import time

from prompttune import Backbone
from prompttune.core.generate import GenerationConfig, Generator
from prompttune.serve.decode import GenRow, decode
from prompttune.structured import Constraint, grammar_for
from prompttune.structured.constraint import ll_tokenizer

SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["positive", "negative"]}, "sure": {"type": "boolean"}},
    "required": ["label", "sure"],
    "additionalProperties": False,
}
ASK = 'Review: {text}\nAnswer in JSON as {{"label": "positive" or "negative", "sure": true or false}}.'


def label_of(text: str) -> str | None:
    return json.loads(text)["label"] if valid(text) else None


def valid(text: str) -> bool:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    return (
        isinstance(value, dict)
        and set(value) == {"label", "sure"}
        and value["label"] in ("positive", "negative")
        and isinstance(value["sure"], bool)
    )


def main(path: str = "../shared/data/sst2/train.jsonl") -> None:
    rows = [json.loads(line) for line in open(path)][:16]
    backbone = Backbone.load()
    gen = Generator(backbone)
    t = time.perf_counter()
    ll_tokenizer(backbone)
    setup = time.perf_counter() - t
    grammar = grammar_for({"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}})
    prompts = []
    for r in rows:
        messages = [{"role": "user", "content": ASK.format(text=r["text"])}]
        text = backbone.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompts.append(backbone.tokenizer(text, add_special_tokens=False)["input_ids"])
    print("| way | seconds | tokens | ms per step (16 rows) | valid JSON | gold label |")
    print("|---|---|---|---|---|---|")
    ways = (("free text", None, 1), ("response_format (schema)", grammar, 1), ("the same, 3 beams", grammar, 3))
    for name, g, beams in ways:
        config = GenerationConfig(max_new_tokens=48, grammar=g, num_beams=beams)
        decode(backbone, [GenRow(prompts[0], None, None, config)])  # warm
        t = time.perf_counter()
        texts = decode(backbone, [GenRow(p, None, None, config) for p in prompts])
        seconds = time.perf_counter() - t
        tokens = [len(backbone.tokenize(x)) for x in texts]
        ok = sum(valid(x) for x in texts)
        right = sum(label_of(x) == r["label"] for x, r in zip(texts, rows, strict=True))
        n, ms = len(texts), 1000 * seconds / max(tokens)
        print(f"| {name} | {seconds:.2f} | {sum(tokens)} | {ms:.1f} | {ok}/{n} | {right}/{n} |")
        print("  e.g.", repr(texts[0][:100]))
    c = Constraint(backbone, grammar)
    vocab = backbone.model.get_output_embeddings().weight.shape[0]
    t = time.perf_counter()
    for _ in range(200):
        c.allowed(vocab)
    mask_ms = (time.perf_counter() - t) * 1000 / 200
    print(f"llguidance tokenizer built once: {setup:.2f} s; a row's mask per step: {mask_ms:.3f} ms")
    del gen


if __name__ == "__main__":
    main(*sys.argv[1:])
