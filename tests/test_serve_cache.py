"""The prefix cache budget (--prefix-cache-mb): with room for one task's prefix, alternating tasks answer as
with no limit, each switch is a counted miss, and the cached bytes never exceed the budget."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from prompttune.serve import ServeConfig, build_table, create_app
from prompttune.serve.prefix_cache import MB, held_bytes
from prompttune.serve.runner import ThreadedServer

TASKS = ["zs=classify", "nli=classify-instruct", "gen=qa"]
LABELS = {"zs": "negative,positive", "nli": "entailment,not_entailment"}
TEXTS = ["a great movie", "boring and bad , bad"]


def build(model_dir, mb=None, **kw):
    return build_table(ServeConfig(model=str(model_dir), prefix_cache_mb=mb), TASKS, LABELS, **kw)


@pytest.fixture(scope="module")
def unlimited(tiny_model_dir):
    return build(tiny_model_dir)


def metric(text: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def resident(table) -> int:
    return sum(held_bytes(t.prefix_owner) for t in table.all())


def test_budget_of_one_prefix_alternates_tasks_with_the_same_answers(unlimited, tiny_model_dir):
    sizes = {n: held_bytes(unlimited.get(n).prefix_owner) for n in ("zs", "nli")}
    assert min(sizes.values()) > 0 and sizes["zs"] != sizes["nli"]
    budget_mb = (max(sizes.values()) + 0.5) / MB  # holds either prefix, never both
    table = build(tiny_model_dir, budget_mb)
    budget = table.cache.budget
    assert max(sizes.values()) <= budget < sum(sizes.values())
    want = {n: unlimited.get(n).task.predictions(TEXTS) for n in ("zs", "nli")}
    with ThreadedServer(create_app(ServeConfig(max_wait_ms=1), table)) as s, httpx.Client(base_url=s.url) as c:
        before = metric(c.get("/metrics").text, "prompttune_prefix_cache_misses_total")
        order = ["zs", "nli"] * 4
        for name in order:
            r = c.post(f"/v1/tasks/{name}/predict", json={"inputs": TEXTS}, timeout=60)
            assert r.status_code == 200, r.text
            for got, w in zip(r.json()["outputs"], want[name], strict=True):
                assert got["label"] == w["label"] and got["scores"] == pytest.approx(w["scores"], abs=1e-5)
            text = c.get("/metrics").text
            assert metric(text, "prompttune_prefix_cache_bytes") <= budget
            assert resident(table) <= budget  # what the models really hold, not only what is counted
        misses = metric(text, "prompttune_prefix_cache_misses_total") - before
        assert misses == len(order)  # every switch recomputed the prefix the other had evicted
        assert metric(text, "prompttune_prefix_cache_evictions_total") >= len(order)
        hits = metric(text, "prompttune_prefix_cache_hits_total")
        assert c.post("/v1/tasks/nli/predict", json={"inputs": TEXTS}, timeout=60).status_code == 200
        assert metric(c.get("/metrics").text, "prompttune_prefix_cache_hits_total") == hits + 1  # same task again
        assert metric(text, "prompttune_prefix_cache_budget_bytes") == budget


def test_a_batch_of_two_tasks_over_the_budget_is_scored_in_groups(unlimited, tiny_model_dir):
    sizes = [held_bytes(unlimited.get(n).prefix_owner) for n in ("zs", "nli")]
    table = build(tiny_model_dir, (max(sizes) + 0.5) / MB)
    want = {(n, t): unlimited.get(n).task.predictions([t])[0] for n in ("zs", "nli") for t in TEXTS}
    app = create_app(ServeConfig(max_batch=4, max_wait_ms=30_000), table)  # the 4 rows close one batch
    with ThreadedServer(app) as s, httpx.Client(base_url=s.url, timeout=60) as c, ThreadPoolExecutor(4) as pool:
        jobs = {k: pool.submit(c.post, f"/v1/tasks/{k[0]}/predict", json={"inputs": [k[1]]}) for k in want}
        for k, f in jobs.items():
            r = f.result()
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["scores"] == pytest.approx(want[k]["scores"], abs=1e-5)
        text = c.get("/metrics").text
    assert "prompttune_batch_rows_count 1.0" in text  # one batch, two forward passes within the budget
    assert resident(table) <= table.cache.budget


def test_generation_prefixes_count_and_a_zero_budget_keeps_nothing(unlimited, tiny_model_dir):
    table = build(tiny_model_dir, 0)
    with ThreadedServer(create_app(ServeConfig(max_wait_ms=1), table)) as s, httpx.Client(base_url=s.url) as c:
        for _ in range(2):
            body = {"model": "gen", "prompt": "the cat", "max_tokens": 4}
            r = c.post("/v1/completions", json=body, timeout=60)
            assert r.status_code == 200, r.text
            want = c.post("/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
            assert r.json()["choices"][0]["text"] == want
            assert resident(table) == 0
        assert metric(c.get("/metrics").text, "prompttune_prefix_cache_hits_total") == 0
    gen = unlimited.get("gen")
    gen.generator.complete(gen.template, {"question": "the cat"})
    assert held_bytes(gen.prefix_owner) > 0  # a generation template's prefix is counted too


def test_prefix_cache_flag_is_checked():
    from prompttune.core.errors import DataError

    with pytest.raises(DataError, match="--prefix-cache-mb"):
        ServeConfig(prefix_cache_mb=-1)
    with pytest.raises(DataError, match="--registry-poll-s"):
        ServeConfig(registry_poll_s=0)


def test_a_source_too_long_for_a_path_is_a_422_naming_it(unlimited):
    with ThreadedServer(create_app(ServeConfig(), unlimited)) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        r = c.post("/v1/tasks", json={"name": "long", "source": "x" * 5000})
        assert r.status_code == 422 and "task 'long'" in r.json()["error"]["message"]
        assert "zs" in [t["name"] for t in c.get("/v1/tasks").json()["tasks"]]
