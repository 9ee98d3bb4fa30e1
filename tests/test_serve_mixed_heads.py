"""Classification-head tasks in the same forward pass as label-word tasks (``serve/mixed.py``): a mixed pass
gives each head row what the head task gives alone (probabilities, label), in a direct call and over HTTP."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from prompttune.core.data import from_records
from prompttune.serve import ServeConfig, build_table, create_app
from prompttune.serve.mixed import mixable_head, score_mixed
from prompttune.serve.runner import ThreadedServer

TEXTS = ["a great movie", "the cat sat on the mat , truly wonderful and fun , I loved it", "bad", "not bad at all"]


@pytest.fixture(scope="module")
def heads(tiny_backbone):
    from prompttune.heads.task import HeadTask

    out = {}
    for name, method, labels in (("topic", "p-tuning-v2", ["world", "sports", "tech"]),
                                 ("mood", "prefix-tuning", ["negative", "positive"])):  # fmt: skip
        task = HeadTask.create(tiny_backbone, "classification", labels, method, {"num_virtual_tokens": 4}, seed=2)
        with torch.no_grad():  # a head that is not all near-uniform: the answers differ per row
            task.model.head.linear.weight.normal_(0, 2.0)
        task.model.trainable.eval()
        out[name] = task
    return out


def test_heads_and_label_words_in_one_pass_equal_each_task_alone(tiny_backbone, heads):
    from prompttune.prompt_task import PromptTask

    words = PromptTask.create(tiny_backbone, ["negative", "positive"], "prompt-tuning", {"num_virtual_tokens": 4})
    assert all(mixable_head(t) for t in heads.values())
    items, want = [], []
    for k, text in enumerate(TEXTS * 2):
        if k % 3 == 2:
            items.append((words.model, words.model.encode(from_records([text])).ids[0]))
            want.append(words.model.score(words.model.encode(from_records([text])))[0].exp())
            continue
        task = heads["topic" if k % 3 == 0 else "mood"]
        row = from_records([text]).rows[0]
        items.append((task.model, task.head_kind.row_ids(task.model, row)))
        want.append(task.head_kind.probabilities(task.model, from_records([text]))[0])
    got = score_mixed(items)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        g = g.exp() if items[k][0] is words.model else g
        assert torch.allclose(g.float(), w.float(), atol=1e-5), k


def test_mixed_head_answers_over_http_equal_the_library(tiny_model_dir, heads, tmp_path, monkeypatch):
    from prompttune.serve import mixed

    specs = []
    for name, task in heads.items():
        task.save(tmp_path / name)
        specs.append(f"{name}={tmp_path / name}")
    table = build_table(ServeConfig(model=str(tiny_model_dir)), [*specs, "zs=classify"], {"zs": "negative,positive"})
    passes = []
    real = mixed.score_mixed

    def recording(items):
        passes.append({type(m).__name__ for m, _ in items})
        return real(items)

    monkeypatch.setattr(mixed, "score_mixed", recording)
    plan = [(name, text) for text in TEXTS for name in ("topic", "mood", "zs")]
    with ThreadedServer(create_app(ServeConfig(max_wait_ms=300, max_batch=64), table)) as s:
        with httpx.Client(base_url=s.url, timeout=120) as c, ThreadPoolExecutor(len(plan)) as pool:
            answers = list(pool.map(lambda p: c.post(f"/v1/tasks/{p[0]}/predict", json={"inputs": [p[1]]}), plan))
    for (name, text), r in zip(plan, answers, strict=True):
        assert r.status_code == 200, r.text
        got = r.json()["outputs"][0]
        if name == "zs":
            continue
        want = table.get(name).task.predictions(from_records([text]))[0]
        assert got["label"] == want["label"] and got["input"] == want["input"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)
    assert any({"HeadModel", "PromptModel"} <= p for p in passes), passes  # heads and label words in one pass
