"""Completions of different tasks decoded together (``serve/decode.py``): the batched loop gives, row for row,
what each request gives alone (greedy token for token; sampled with its own seed too), with different prompt
lengths, soft-prompt methods, hard prompts, stop strings and max_tokens; over HTTP, concurrent completions
(streamed and not) land in one decoding loop and each answer equals the library's."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from prompttune.core.generate import GenerationConfig, Generator
from prompttune.serve import ServeConfig, build_table, create_app
from prompttune.serve.decode import GenRow, decode
from prompttune.serve.runner import ThreadedServer

TEXTS = ["a great movie", "the cat sat on the mat , truly wonderful and fun , I loved it", "bad"]
METHODS = ("prompt-tuning", "p-tuning", "prefix-tuning", "p-tuning-v2")
CONFIGS = [
    GenerationConfig(max_new_tokens=12),
    GenerationConfig(max_new_tokens=3),
    GenerationConfig(max_new_tokens=20, stop=("e",)),
    GenerationConfig(max_new_tokens=16, repetition_penalty=1.0, no_repeat_ngram_size=0),
    GenerationConfig(max_new_tokens=9, temperature=0.8, seed=3),
]


@pytest.fixture(scope="module")
def tasks(tiny_backbone):
    from prompttune.prompt_task import PromptTask

    out = {m: PromptTask.create(tiny_backbone, ["negative", "positive"], m, {"num_virtual_tokens": 4}, seed=1)
           for m in METHODS}  # fmt: skip
    out["zs"] = PromptTask.create(tiny_backbone, ["negative", "positive"], "zero-shot", {}, "classify")
    return out


def label_row(task, text: str, config: GenerationConfig) -> GenRow:
    m = task.model
    return GenRow(m.row_ids(m.compiled.render_row({"text": text})), m.cached_prefix() or None, m.row_inputs, config)


def test_batched_decoding_equals_one_request_at_a_time(tiny_backbone, tasks):
    gen = Generator(tiny_backbone)
    rows, want, k = [], [], 0
    for task in tasks.values():
        for text in TEXTS:
            config = CONFIGS[k % len(CONFIGS)]
            k += 1
            rows.append(label_row(task, text, config))
            want.append(task.generate(text, config))
    for text in TEXTS:  # a generation template (its own cached prefix, no soft tokens)
        config = CONFIGS[k % len(CONFIGS)]
        k += 1
        ids, prefix = gen.prompt("qa", {"question": text})
        rows.append(GenRow(ids, prefix, None, config))
        want.append(gen.complete("qa", {"question": text}, config))
    got = decode(tiny_backbone, rows)
    assert got == want
    assert len({len(r.ids) for r in rows}) > 3 and len({id(r.prefix) for r in rows}) >= 6  # lengths and prefixes mix
    assert len({len(w) for w in want}) > 2  # rows finish at different steps
    # one task's rows share its prefix unexpanded; the same answers
    same = [label_row(tasks["prefix-tuning"], t, CONFIGS[0]) for t in TEXTS]
    assert decode(tiny_backbone, same) == [tasks["prefix-tuning"].generate(t, CONFIGS[0]) for t in TEXTS]


def test_a_row_whose_processors_raise_fails_alone(tiny_backbone, tasks):
    from prompttune.serve.streaming import ReportingConfig, StreamClosed

    seen = []

    def leave(ids):
        seen.append(len(ids))
        if len(ids) >= 2:
            raise StreamClosed("the client went away")

    config = GenerationConfig(max_new_tokens=8, repetition_penalty=1.0, no_repeat_ngram_size=0)
    rows = [
        label_row(tasks["zs"], TEXTS[0], ReportingConfig.of(config, leave)),
        label_row(tasks["zs"], TEXTS[1], config),
    ]
    got = decode(tiny_backbone, rows)
    assert isinstance(got[0], StreamClosed) and max(seen) == 2
    assert got[1] == tasks["zs"].generate(TEXTS[1], config)


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """Soft prompts of two methods, a label-word hard prompt, a generation template; batches wait 300 ms."""
    from prompttune import Backbone
    from prompttune.prompt_task import PromptTask

    folder = tmp_path_factory.mktemp("batchgen")
    backbone = Backbone.load(str(tiny_model_dir))
    specs = []
    for name, method in (("pt", "prompt-tuning"), ("deep", "p-tuning-v2")):
        PromptTask.create(backbone, ["negative", "positive"], method, {"num_virtual_tokens": 4}).save(folder / name)
        specs.append(f"{name}={folder / name}")
    table = build_table(ServeConfig(model=str(tiny_model_dir)), [*specs, "zs=classify", "gen=qa"],
                        {"zs": "negative,positive"})  # fmt: skip
    with ThreadedServer(create_app(ServeConfig(max_wait_ms=300, max_batch=16), table)) as s:
        yield s, table


def library_answer(table, name: str, prompt: str, config: GenerationConfig) -> str:
    served = table.get(name)
    if served.kind == "generation":
        return Generator(served.backbone).complete(served.template, {"question": prompt}, config)
    return served.task.generate(prompt, config)


def test_concurrent_completions_decode_together_and_equal_the_library(server, monkeypatch):
    from prompttune.serve import decode as decode_module

    s, table = server
    sizes, lock = [], threading.Lock()
    real = decode_module.decode

    def recording(backbone, rows):
        with lock:
            sizes.append(len(rows))
        return real(backbone, rows)

    monkeypatch.setattr(decode_module, "decode", recording)
    plan = [(name, text, n, stream) for (name, text, n), stream in zip(
        [("pt", TEXTS[0], 6), ("deep", TEXTS[1], 9), ("zs", TEXTS[2], 4), ("gen", TEXTS[1], 7), ("pt", TEXTS[1], 5),
         ("gen", TEXTS[0], 3)], [False, True, False, True, True, False], strict=True)]  # fmt: skip

    def ask(c: httpx.Client, name: str, text: str, n: int, stream: bool) -> str:
        body = {"model": name, "prompt": text, "max_tokens": n, "stream": stream, "temperature": 0}
        if not stream:
            r = c.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]
        with c.stream("POST", "/v1/completions", json=body) as r:
            events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
        return "".join(e["choices"][0]["text"] for e in events)

    with httpx.Client(base_url=s.url, timeout=120) as c, ThreadPoolExecutor(len(plan)) as pool:
        got = list(pool.map(lambda p: ask(c, *p), plan))
    for (name, text, n, _), answer in zip(plan, got, strict=True):
        assert answer == library_answer(table, name, text, GenerationConfig(max_new_tokens=n)), name
    assert max(sizes) >= 3, sizes  # requests arriving within --max-wait-ms shared one decoding loop
    assert sum(sizes) == len(plan)
