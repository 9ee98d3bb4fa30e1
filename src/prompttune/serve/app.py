"""The HTTP app: predict, the task table, health and metrics; the OpenAI-compatible routes are in openai_api.py.

POST   /v1/tasks/{name}/predict   {"inputs": [row, ...]} -> {"task", "outputs"}
GET    /v1/tasks                   the tasks (this key may use)
POST   /v1/tasks                   {"name", "source", "labels"?, "verbalizer"?}  (admin key)
DELETE /v1/tasks/{name}            (admin key)
GET    /healthz, /metrics
GET    /v1/models, POST /v1/completions, POST /v1/chat/completions   (openai_api.py)
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from prompttune.core.data import from_records
from prompttune.core.errors import DataError, PromptTuneError
from prompttune.serve.auth import KeyStore
from prompttune.serve.batcher import Batcher, QueueFull
from prompttune.serve.config import ServeConfig
from prompttune.serve.follow import LabelFollower
from prompttune.serve.http import ApiError, Server, as_api_error, error_response
from prompttune.serve.metrics import Metrics
from prompttune.serve.tasks import TaskTable, parse_labels


def create_app(config: ServeConfig, table: TaskTable, keys: KeyStore | None = None) -> FastAPI:
    """The server over ``table`` (tasks already loaded, or none). ``keys``: default from ``config.api_keys``."""
    from prompttune.serve import openai_api

    if keys is None and config.api_keys is not None:
        keys = KeyStore.from_file(config.api_keys)
    metrics = Metrics(lambda: batcher.depth, table.all, table.cache)
    batcher = Batcher(
        config.max_batch, config.max_wait_ms, config.max_queue, metrics.batch, table.cache, config.max_wait_share
    )
    server = Server(config, table, batcher, keys, metrics)
    follower = LabelFollower(table, config.registry_poll_s, metrics.reloaded)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        follower.start()
        try:
            yield
        finally:  # uvicorn stops taking requests first (SIGTERM), then this drains the queue
            follower.stop()
            await run_in_threadpool(batcher.stop, config.timeout_s)

    app = FastAPI(
        title="prompttune serve",
        description="One frozen backbone, many prompt tasks, chosen per request.",
        lifespan=lifespan,
    )
    app.state.server, app.state.follower = server, follower

    async def _errors(request: Request, exc: Exception) -> JSONResponse:
        return error_response(as_api_error(exc))

    for kind in (ApiError, PromptTuneError, QueueFull):  # anything else: a 500, answered by _measure
        app.add_exception_handler(kind, _errors)

    @app.middleware("http")
    async def _measure(request: Request, call_next):
        t0 = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as e:  # noqa: BLE001 - answered as JSON with its status
            response = error_response(as_api_error(e))
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        task = getattr(request.state, "task", "") or ""
        metrics.request(task, endpoint, response.status_code, time.perf_counter() - t0)
        return response

    @app.post("/v1/tasks/{name}/predict")
    async def predict(name: str, request: Request) -> dict:
        """Labels and scores (label words, classification heads), entities (tagging) or answers (QA) per row."""
        served = server.task_for(request, name)
        body = await server.body(request)
        unknown = sorted(set(body) - {"inputs"})
        if unknown:
            raise ApiError(422, f'unknown field(s) {unknown}; a predict body is {{"inputs": [row, ...]}}.')
        rows = from_records(server.check_rows(body.get("inputs")), "inputs")
        if served.kind == "labels":
            scores = await server.run(served, "labels", rows, len(rows))
            return {"task": name, "outputs": label_outputs(served, rows, scores)}
        if served.kind == "head":
            return {"task": name, "outputs": await server.run(served, "head", rows, len(rows))}

        def complete() -> list[dict]:
            fields = served.fields
            return [
                {"input": shown(r.fields, fields), "text": served.generator.complete(served.template, r.fields)}
                for r in rows.rows
            ]

        return {"task": name, "outputs": await server.run(served, "call", complete, len(rows))}

    @app.get("/v1/tasks")
    async def list_tasks(request: Request) -> dict:
        return {"tasks": [t.describe() for t in server.visible(request)]}

    @app.post("/v1/tasks", status_code=201)
    async def add_task(request: Request) -> dict:
        """Load a task while the server runs: {"name", "source", "labels"?: [..] or "a,b", "verbalizer"?}."""
        server.admin(request)
        body = await server.body(request)
        unknown = sorted(set(body) - {"name", "source", "labels", "verbalizer"})
        if unknown:
            raise ApiError(422, f"unknown field(s) {unknown}; give name, source, and for a hard prompt labels.")
        name, source = body.get("name"), body.get("source")
        if not isinstance(name, str) or not isinstance(source, str):
            raise ApiError(422, "'name' and 'source' must be strings.")
        request.state.task = name
        labels = body.get("labels")
        if isinstance(labels, list) and all(isinstance(x, str) for x in labels):
            labels = parse_labels(",".join(labels), "labels")
        elif isinstance(labels, str):
            labels = parse_labels(labels, "labels")
        elif labels is not None:
            raise ApiError(422, "'labels' must be a list of strings or 'a,b,c'.")
        verbalizer = body.get("verbalizer")
        if verbalizer is not None and (not isinstance(verbalizer, str) or verbalizer.endswith(".json")):
            raise DataError("'verbalizer': give 'label=word|word;label=word' (files are read from the command line).")
        served = await run_in_threadpool(server.table.add, name, source, labels, verbalizer)
        if served.follows:
            follower.wake()  # starts listening (PostgreSQL) now, not at the next poll
        return served.describe()

    @app.delete("/v1/tasks/{name}")
    async def remove_task(name: str, request: Request) -> dict:
        server.admin(request)
        request.state.task = name
        server.table.remove(name)
        return {"deleted": name}

    @app.get("/healthz")
    async def healthz():
        body = {"status": "ok", "tasks": len(server.table.names()), "queue_rows": server.batcher.depth}
        if not server.batcher.alive:  # nothing would answer the queue: a balancer should stop sending here
            return JSONResponse({**body, "status": "the batching worker is not running"}, status_code=503)
        return body

    @app.get("/metrics")
    async def metrics_text(request: Request) -> Response:
        server.caller(request)
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    openai_api.register(app, server)
    return app


def shown(fields: dict, names: list[str]) -> str:
    """What a prediction's "input" shows, as ``Task.predictions`` shows it."""
    return fields.get("text") or " | ".join(str(fields[v]) for v in names)


def label_outputs(served, rows, scores) -> list[dict]:
    labels = list(served.task.labels)
    names = served.fields
    out = []
    for row, s in zip(rows.rows, scores, strict=True):
        probs = s.exp()
        out.append(
            {
                "input": shown(row.fields, names),
                "label": labels[int(probs.argmax())],
                "scores": dict(zip(labels, map(float, probs), strict=True)),
            }
        )
    return out
