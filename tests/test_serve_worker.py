"""The server's batching worker: an error outside the per-request guards fails that batch's requests with a 500
and the worker goes on serving; a worker that is not running makes /healthz a 503 (a balancer stops sending)."""

from __future__ import annotations

import httpx

from prompttune.serve import ServeConfig, build_table, create_app
from prompttune.serve.runner import ThreadedServer


def test_a_failing_batch_is_a_500_and_the_worker_goes_on(tiny_model_dir, monkeypatch):
    """Here the whole batch's run raises, as a module that fails to import inside the worker would (a dead worker
    used to leave every request waiting for its timeout behind a server that still answered /healthz)."""
    from prompttune.serve import batcher

    table = build_table(ServeConfig(model=str(tiny_model_dir)), ["zs=classify"], {"zs": "negative,positive"})
    real = batcher.Batcher._run
    calls = []

    def flaky(self, jobs):
        calls.append(len(jobs))
        if len(calls) == 1:
            raise SyntaxError("unterminated string literal (detected at line 142)")
        return real(self, jobs)

    monkeypatch.setattr(batcher.Batcher, "_run", flaky)
    app = create_app(ServeConfig(timeout_s=60), table)
    with ThreadedServer(app) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        predict = lambda: c.post("/v1/tasks/zs/predict", json={"inputs": ["a great movie"]})  # noqa: E731
        r = predict()
        assert r.status_code == 500 and "SyntaxError" in r.json()["error"]["message"]
        r = predict()
        assert r.status_code == 200 and r.json()["outputs"][0]["label"] in ("negative", "positive")
        assert c.get("/healthz").status_code == 200
        app.state.server.batcher.stop(5)
        r = c.get("/healthz")
        assert r.status_code == 503 and "not running" in r.json()["status"]


def test_the_worker_hands_freed_heap_back(tiny_model_dir, monkeypatch):
    """Batches of every shape leave glibc's heap holding freed blocks: the worker trims it every few batches
    (and at once after a batch that grew resident memory), so a long-running server's memory does not drift."""
    from prompttune.core import heap

    trims = []
    monkeypatch.setattr(heap, "release_memory", lambda: trims.append(1))
    table = build_table(ServeConfig(model=str(tiny_model_dir)), ["zs=classify"], {"zs": "negative,positive"})
    app = create_app(ServeConfig(timeout_s=60), table)
    with ThreadedServer(app) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        for i in range(10):  # one request at a time: ten batches
            r = c.post("/v1/tasks/zs/predict", json={"inputs": [f"row {i}"]})
            assert r.status_code == 200
        assert trims, "ten batches and no trim"
