"""`prompttune serve` with packs (train-multi / continual: ``PACK#TASK``) and ATTEMPT mixtures, on the tiny model:
each task of a pack answers as `prompttune predict PACK --task NAME` does, in one mixed batch with other tasks;
a mixture (a prompt per input) is scored per task in the same batch; bad specs name the pack's tasks."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from test_attempt import make_pack, train_mixture
from test_serve import TEXTS, assert_same_predictions, predict

from prompttune.api import predict as library_predict
from prompttune.core.data import from_records
from prompttune.core.errors import DataError
from prompttune.serve import ServeConfig, build_table, create_app
from prompttune.serve.runner import ThreadedServer

PAIRS = [{"text_a": "the cat", "text_b": "the cat sat"}, {"text_a": "bad", "text_b": "great"}]


@pytest.fixture(scope="module")
def pack(tmp_path_factory, tiny_backbone):
    """An mpt pack of sent and topic (early templates), tasks spread apart."""
    return make_pack(tmp_path_factory.mktemp("serve-pack"), tiny_backbone, "mpt", "early", spread=True)


@pytest.fixture(scope="module")
def mixture(pack, tmp_path_factory, tiny_backbone):
    """An ATTEMPT mixture over the pack's prompts, trained on pair rows."""
    from conftest import write_jsonl
    from multitask_data import PAIR

    folder = tmp_path_factory.mktemp("serve-mix")
    target = write_jsonl(folder / "pair.jsonl", PAIR * 4)
    train_mixture(pack, target, folder / "mix", tiny_backbone)
    return folder / "mix"


@pytest.fixture(scope="module")
def table(pack, mixture, tiny_model_dir):
    tasks = [f"sent={pack}#sent", f"topic={pack}#topic", f"mix={mixture}", "zs=classify"]
    return build_table(ServeConfig(model=str(tiny_model_dir)), tasks, {"zs": "negative,positive"})


def test_pack_tasks_and_a_mixture_in_one_batch_equal_the_library(table, pack, mixture, tiny_model_dir):
    """Every row of 4 tasks (two from one pack, a mixture, a hard prompt) in ONE batch: each answer equals
    `prompttune predict` on that artifact (with --task for the pack's)."""
    jobs = [("sent", t) for t in TEXTS] + [("topic", t) for t in TEXTS] + [("zs", t) for t in TEXTS]
    jobs += [("mix", p) for p in PAIRS]
    app = create_app(ServeConfig(max_batch=len(jobs), max_wait_ms=30_000), table)  # closes when all are in
    with ThreadedServer(app) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        with ThreadPoolExecutor(len(jobs)) as workers:
            futures = [(n, x, workers.submit(predict, c, n, [x])) for n, x in jobs]
            got = [(n, x, f.result()) for n, x, f in futures]
        metrics = c.get("/metrics").text
        described = {t["name"]: t for t in c.get("/v1/tasks").json()["tasks"]}
    assert "prompttune_batch_rows_count 1.0" in metrics  # all in one batch
    model = str(tiny_model_dir)
    for name, x, r in got:
        assert r.status_code == 200, r.text
        if name in ("sent", "topic"):
            want = library_predict(pack, [x], model, task_name=name)
        elif name == "mix":
            want = library_predict(mixture, [x], model)
        else:
            want = table.get("zs").task.predictions(from_records([x]))
        assert_same_predictions(r.json()["outputs"], want)
    assert described["sent"]["source"].endswith("#sent") and described["sent"]["resolved"].endswith("#sent")
    assert described["topic"]["labels"] != described["sent"]["labels"]  # each pack task has its own labels


def test_a_mixture_does_not_generate(table):
    app = create_app(ServeConfig(max_wait_ms=5), table)
    with ThreadedServer(app) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        r = c.post("/v1/completions", json={"model": "mix", "prompt": "the cat", "max_tokens": 2})
        assert r.status_code == 422 and "ATTEMPT mixture" in r.json()["error"]["message"]
        ok = c.post("/v1/completions", json={"model": "sent", "prompt": "the cat", "max_tokens": 2})
        assert ok.status_code == 200, ok.text  # a pack's task writes like any prompt-tuning task


def test_hot_add_a_pack_task(table, pack):
    app = create_app(ServeConfig(max_wait_ms=5), table)
    with ThreadedServer(app) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        r = c.post("/v1/tasks", json={"name": "topic2", "source": f"{pack}#topic"})
        assert r.status_code == 201, r.text
        a, b = predict(c, "topic2", TEXTS), predict(c, "topic", TEXTS)
        assert a.status_code == b.status_code == 200
        assert_same_predictions(a.json()["outputs"], b.json()["outputs"])
        bad = c.post("/v1/tasks", json={"name": "p", "source": str(pack)})
        assert bad.status_code == 422 and "sent, topic" in bad.json()["error"]["message"]
        assert c.delete("/v1/tasks/topic2").status_code == 200
    assert "topic2" not in table.names()


@pytest.mark.parametrize(
    "spec, says",
    [
        ("{pack}", "a pack of 2 tasks (sent, topic); serve one as NAME={pack}#TASK"),
        ("{pack}#nope", "has no task 'nope'; it has sent, topic"),
        ("{mixture}#sent", "is a single-task artifact, not a pack; leave out #sent"),
        ("classify#sent", "is a template, not a pack; leave out #sent"),
        ("{pack}#", "write PACK#TASK"),
    ],
)
def test_bad_pack_specs_name_the_tasks(table, pack, mixture, spec, says):
    source = spec.format(pack=pack, mixture=mixture)
    with pytest.raises(DataError) as e:
        table.add("x", source)
    assert says.format(pack=pack) in str(e.value)
    assert "x" not in table.names()


def test_a_pack_task_from_a_registry_label(pack, tmp_path, tiny_model_dir):
    """``packs@production#sent``: the pack is stored as a registry version; the task follows the label."""
    from prompttune.registry import Registry
    from prompttune.registry.content import add_source

    db = str(tmp_path / "registry.db")
    registry = Registry(db)
    add_source(registry, "packs", str(pack), {})
    registry.set_label("packs@v1", "production")
    table = build_table(ServeConfig(model=str(tiny_model_dir), registry=db), ["s=packs@production#sent"])
    served = table.get("s")
    assert served.follows == "packs@production" and served.version_number == 1
    assert served.source == "packs@production#sent" and served.shown.endswith("#sent")
    want = library_predict(pack, TEXTS, str(tiny_model_dir), task_name="sent")
    assert_same_predictions(served.task.predictions(from_records(TEXTS)), want)
    replaced = table.replace(served)  # what the label follower does when the label moves
    assert replaced is not None and replaced.source == served.source and replaced.task is not served.task
