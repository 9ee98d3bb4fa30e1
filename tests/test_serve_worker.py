"""The server's batching worker: an error outside the per-request guards fails that batch's requests with a 500
and the worker goes on serving; a worker that is not running makes /healthz a 503 (a balancer stops sending)."""

from __future__ import annotations

import time

import httpx
import pytest

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
        for _ in range(200):  # the tenth batch's trim comes after its answer: wait for it, 10 s at most
            if trims:
                break
            time.sleep(0.05)
        assert trims, "ten batches and no trim"


def test_a_batch_waits_a_share_of_the_last_batchs_run_time(monkeypatch):
    """Clients answered together by one batch send their next requests together a little later: the next batch
    waits a share of the last batch's run time for them (at most SHARE_WAIT_MAX_S), not only --max-wait-ms, so the
    load does not split into half-full batches. The worker records what each batch took."""
    import asyncio
    import time

    import pytest

    from prompttune.core.errors import DataError
    from prompttune.serve import batcher

    b = batcher.Batcher(max_wait_ms=5, max_wait_share=0.15)
    assert b.wait_s() == 0.005  # nothing has run yet
    b.last_run_s = 0.2
    assert b.wait_s() == pytest.approx(0.03)
    b.last_run_s = 10.0  # a long generation: the wait stays bounded
    assert b.wait_s() == batcher.SHARE_WAIT_MAX_S
    assert batcher.Batcher(max_wait_ms=5, max_wait_share=0).wait_s() == 0.005
    with pytest.raises(DataError, match="--max-wait-share"):
        ServeConfig(max_wait_share=1.5)

    sizes: list[int] = []

    def run(self, jobs):  # a batch that takes 0.3 s and answers every job
        sizes.append(len(jobs))
        time.sleep(0.3)
        for j in jobs:
            j.finish(len(jobs))

    monkeypatch.setattr(batcher.Batcher, "_run", run)
    monkeypatch.setattr(batcher, "SHARE_WAIT_MAX_S", 10.0)

    async def two_requests(b: batcher.Batcher, gap_s: float) -> None:
        first = b.submit(None, "call", None, 1)
        await asyncio.sleep(gap_s)
        second = b.submit(None, "call", None, 1)
        await asyncio.gather(first.future, second.future)

    for share, together in ((5.0, True), (0.0, False)):  # after a 0.3 s batch: wait 1.5 s, or 5 ms
        sizes.clear()
        b = batcher.Batcher(max_wait_ms=5, max_wait_share=share)
        b.start()
        try:
            asyncio.run(two_requests(b, 0.0))  # one batch of 2, which sets last_run_s
            assert sizes == [2] and b.last_run_s >= 0.3
            asyncio.run(two_requests(b, 0.5))  # the second request comes 0.5 s after the first
            assert sizes[1:] == ([2] if together else [1, 1])
        finally:
            b.stop(5)


def test_long_rows_are_scored_in_passes_within_the_token_budget(tiny_model_dir, monkeypatch):
    """One request of rows of several lengths: the batch is scored in passes of at most SCORE_TOKEN_BUDGET tokens
    (rows x the longest; a longer row alone), and the answers are the library's."""
    from prompttune import scorer
    from prompttune.core.data import from_records
    from prompttune.serve import mixed

    table = build_table(ServeConfig(model=str(tiny_model_dir)), ["zs=classify"], {"zs": "negative,positive"})
    texts = ["good", "a great movie , truly", "bad " * 20, "the cat sat on the mat , and it was fine , really"]
    model = table.get("zs").task.model
    lengths = sorted(len(ids) for ids in model.encode(from_records(texts)).ids)
    budget = lengths[1] * 2  # the two shortest rows fit a pass; the longer ones do not fit with another
    monkeypatch.setattr(scorer, "SCORE_TOKEN_BUDGET", budget)
    passes = []
    real = mixed.score_mixed
    monkeypatch.setattr(mixed, "score_mixed", lambda items: passes.append([len(i) for _, i in items]) or real(items))
    with ThreadedServer(create_app(ServeConfig(), table)) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        r = c.post("/v1/tasks/zs/predict", json={"inputs": texts})
    assert r.status_code == 200, r.text
    assert len(passes) >= 3 and sorted(n for p in passes for n in p) == lengths
    assert all(len(p) == 1 or len(p) * max(p) <= budget for p in passes), passes
    want = table.get("zs").task.predictions(from_records(texts))
    for got, w in zip(r.json()["outputs"], want, strict=True):
        assert got["label"] == w["label"] and got["scores"] == pytest.approx(w["scores"], abs=1e-5)
