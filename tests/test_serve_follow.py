"""A task added from a registry label follows the label: move it and the server serves the new version within
a few seconds, with no failed request (SQLite: polling; PostgreSQL: LISTEN/NOTIFY, with polling set too slow
to be what found the move)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from prompttune.serve import ServeConfig, build_table, create_app
from prompttune.serve.runner import ThreadedServer

TEXTS = ["a great movie", "boring and bad , bad"]
WORDS = {1: "negative=bad;positive=good", 2: "negative=awful|dull;positive=great|fun"}


def two_versions(db: str):
    """senti@v1 and senti@v2 (the same template, other label words), production -> v1."""
    from prompttune.registry import Registry
    from prompttune.registry.content import add_source

    registry = Registry(db)
    for n in (1, 2):
        version, _ = add_source(registry, "senti", "classify", {}, verbalizer=WORDS[n])
        assert version.number == n
    registry.set_label("senti@v1", "production")
    return registry


def poll_s(db: str) -> float:
    return 60.0 if db.startswith("postgresql") else 0.25  # PostgreSQL: the notification must do it


def wait_for_version(client: httpx.Client, task: str, number: int, limit_s: float) -> float:
    """Seconds until GET /v1/tasks shows ``task`` on version ``number`` (bounded: fails after ``limit_s``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        tasks = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}
        if tasks[task].get("version") == number:
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"{task} still on {tasks[task].get('resolved')} after {limit_s} s")


def test_task_follows_its_label_with_no_failed_request(db, tiny_model_dir):
    registry = two_versions(db)
    config = ServeConfig(model=str(tiny_model_dir), registry=db, registry_poll_s=poll_s(db), max_wait_ms=1)
    table = build_table(config, ["s=senti@production", "pinned=senti@v1"])
    assert table.get("s").version_number == 1 and table.get("s").follows == "senti@production"
    assert table.get("pinned").follows is None  # a version number never moves
    v2 = build_table(config, ["x=senti@v2"]).get("x").task.predictions(TEXTS)
    statuses: list[int] = []
    stop = threading.Event()
    with ThreadedServer(create_app(config, table)) as s, httpx.Client(base_url=s.url, timeout=60) as c:

        def traffic():
            with httpx.Client(base_url=s.url, timeout=60) as t:
                for _ in range(2000):  # bounded; ends once the swap is seen
                    statuses.append(t.post("/v1/tasks/s/predict", json={"inputs": TEXTS}).status_code)
                    if stop.is_set():
                        return

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            time.sleep(0.3)
            registry.set_label("senti@v2", "production")
            took = wait_for_version(c, "s", 2, limit_s=5.0)
            time.sleep(0.2)  # requests on the new version too
        finally:
            stop.set()
            worker.join(120)
        assert took < 5.0
        assert len(statuses) > 2 and set(statuses) == {200}
        got = c.post("/v1/tasks/s/predict", json={"inputs": TEXTS}).json()["outputs"]
        assert [g["scores"] for g in got] == [pytest.approx(w["scores"], abs=1e-5) for w in v2]
        assert "senti@v2" in {t["name"]: t for t in c.get("/v1/tasks").json()["tasks"]}["s"]["resolved"]
        assert 'prompttune_task_reloads_total{task="s"} 1.0' in c.get("/metrics").text
        # the label removed: the task keeps serving what it has
        registry.remove_label("senti", "production")
        follower = s.server.config.app.state.follower
        assert follower.check() == []
        assert c.post("/v1/tasks/s/predict", json={"inputs": TEXTS}).status_code == 200
        assert table.get("pinned").version_number is None
