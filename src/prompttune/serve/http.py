"""What every endpoint shares: the server's state, errors as JSON with the right status, keys, bounded bodies."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse

from prompttune.core.errors import PromptTuneError
from prompttune.serve.auth import ApiKey, KeyStore, key_from_headers
from prompttune.serve.batcher import Batcher, Job, QueueFull
from prompttune.serve.config import ServeConfig
from prompttune.serve.metrics import Metrics
from prompttune.serve.tasks import ServedTask, TaskConflict, TaskNotFound, TaskTable

RETRY_AFTER_S = 1


class ApiError(Exception):
    """An HTTP error with a message that says what was wrong and what to do."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


def error_response(e: ApiError) -> JSONResponse:
    # the OpenAI error shape: the official client shows error.message
    body = {"error": {"message": e.message, "type": e.kind, "code": e.status}}
    return JSONResponse(body, status_code=e.status, headers=e.headers)


def as_api_error(e: Exception) -> ApiError:
    if isinstance(e, ApiError):
        return e
    if isinstance(e, TaskNotFound):
        return ApiError(404, str(e), "not_found_error")
    if isinstance(e, TaskConflict):
        return ApiError(409, str(e), "conflict_error")
    if isinstance(e, PromptTuneError):
        return ApiError(422, str(e))
    if isinstance(e, QueueFull):
        return ApiError(429, f"{e}; retry after {RETRY_AFTER_S} s.", "rate_limit_error",
                        {"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
    return ApiError(500, f"internal error ({type(e).__name__}: {e})", "server_error")


@dataclass
class Server:
    config: ServeConfig
    table: TaskTable
    batcher: Batcher
    keys: KeyStore | None
    metrics: Metrics

    # --- who is asking ---------------------------------------------------------------------------
    def caller(self, request: Request) -> ApiKey | None:
        """The caller's key (None when the server has no keys: loopback only, open). 401 without a valid one."""
        if self.keys is None:
            return None
        key = self.keys.find(key_from_headers(request.headers))
        if key is None:
            raise ApiError(
                401, "missing or unknown API key: send 'Authorization: Bearer KEY'.", "authentication_error",
                {"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
        return key

    def task_for(self, request: Request, name: str) -> ServedTask:
        key = self.caller(request)
        request.state.task = name
        if key is not None and not key.may_use(name):
            raise ApiError(403, f"this API key may not use task {name!r}.", "permission_error")
        return self.table.get(name)

    def admin(self, request: Request) -> None:
        key = self.caller(request)
        if key is not None and not key.admin:
            raise ApiError(403, "adding or removing tasks needs an admin key.", "permission_error")

    def visible(self, request: Request) -> list[ServedTask]:
        key = self.caller(request)
        return [t for t in self.table.all() if key is None or key.may_use(t.name)]

    # --- bodies and jobs -------------------------------------------------------------------------
    async def body(self, request: Request) -> dict:
        """The JSON object of the body, read up to --max-body-bytes (413 past it)."""
        limit = self.config.max_body_bytes
        too_large = ApiError(413, f"the request body is larger than {limit:,} bytes (--max-body-bytes).")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        try:
            data = json.loads(b"".join(chunks) or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON ({e}).") from None
        if not isinstance(data, dict):
            raise ApiError(422, "the body must be a JSON object.")
        return data

    async def run(self, served: ServedTask, kind: str, payload, size: int):
        """Queue a job and wait for its result (504 after --timeout; 429 when the queue is full)."""
        job: Job = self.batcher.submit(served, kind, payload, size)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), self.config.timeout_s)
        except TimeoutError:
            job.cancelled = True
            raise ApiError(
                504, f"the request waited longer than {self.config.timeout_s:g} s (--timeout); try again later.",
                "timeout_error",
            ) from None  # fmt: skip

    def check_rows(self, inputs) -> list:
        """A predict request's rows: a non-empty list of strings or objects, each within the size limits."""
        limit = self.config
        if not isinstance(inputs, list) or not inputs:
            raise ApiError(422, "'inputs' must be a non-empty list of rows (strings, or objects of the task's fields).")
        if len(inputs) > limit.max_rows:
            raise ApiError(413, f"{len(inputs)} rows in one request; the limit is {limit.max_rows} (--max-rows).")
        for i, row in enumerate(inputs, start=1):
            size = text_size(row)
            if size > limit.max_input_chars:
                raise ApiError(
                    413, f"inputs item {i}: {size:,} characters; the limit is {limit.max_input_chars:,} "
                    "(--max-input-chars).",
                )  # fmt: skip
        return inputs


def text_size(value) -> int:
    """Characters of a row: its strings, recursively (objects' keys and values, lists' items)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(str(k)) + text_size(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(text_size(v) for v in value)
    return len(str(value))
