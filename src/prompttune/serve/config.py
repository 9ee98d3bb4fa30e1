"""The server's settings and limits. Each checks itself: a bad value is an error naming its flag."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from prompttune.core.errors import DataError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
PREFIX_DTYPES = {None: None, "model": None, "bfloat16": "bfloat16", "float16": "float16", "int8": "int8"}


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32  # rows in one forward pass
    max_wait_ms: float = 5.0  # how long a batch waits for more rows after its first
    max_wait_share: float = 0.15  # or this share of the last batch's run time, where longer (at most 50 ms)
    max_queue: int = 1024  # rows waiting at most; more: 429 with Retry-After
    timeout_s: float = 60.0  # a request waiting longer: 504
    max_body_bytes: int = 1024 * 1024  # request body: 413
    max_rows: int = 64  # rows in one predict request: 413
    max_input_chars: int = 16_384  # characters of one row (all its fields): 413
    max_tokens: int = 512  # max_tokens of one completion: 422
    prefix_cache_mb: float | None = None  # cached task prefixes' keys/values at most (None: no limit)
    prefix_cache_dtype: str | None = None  # keep cached prefixes in this dtype (None: as computed)
    registry_poll_s: float = 2.0  # how often registry labels are checked (SQLite; PostgreSQL also listens)
    model: str | None = None  # the backbone for hard-prompt tasks (artifacts use their own)
    registry: str | None = None  # registry database for NAME@LABEL sources
    api_keys: Path | None = None
    dtype: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        _whole("--port", self.port, 0, 65_535)
        _whole("--max-batch", self.max_batch, 1, 4096)
        _whole("--max-queue", self.max_queue, 1, 1_000_000)
        _whole("--max-body-bytes", self.max_body_bytes, 1024, 256 * 1024 * 1024)
        _whole("--max-rows", self.max_rows, 1, 100_000)
        _whole("--max-input-chars", self.max_input_chars, 1, 10_000_000)
        _whole("--max-tokens", self.max_tokens, 1, 4096)
        _number("--max-wait-ms", self.max_wait_ms, 0, 60_000)
        _number("--max-wait-share", self.max_wait_share, 0, 1)
        _number("--timeout", self.timeout_s, 0.001, 86_400)
        if self.prefix_cache_mb is not None:
            _number("--prefix-cache-mb", self.prefix_cache_mb, 0, 1_048_576)
        if self.prefix_cache_dtype not in PREFIX_DTYPES:
            raise DataError(
                f"--prefix-cache-dtype {self.prefix_cache_dtype}: choose {' or '.join(k for k in PREFIX_DTYPES if k)}."
            )
        _number("--registry-poll-s", self.registry_poll_s, 0.05, 3600)
        if self.max_queue < self.max_rows:
            raise DataError(f"--max-queue {self.max_queue}: must hold at least one full request (--max-rows).")
        if self.api_keys is None and self.host not in LOOPBACK:
            raise DataError(
                f"--host {self.host}: without --api-keys the server listens on 127.0.0.1 only (anyone who can "
                "reach it could use it); give --api-keys FILE to listen on another address."
            )

    @property
    def prefix_cache_bytes(self) -> int | None:
        return None if self.prefix_cache_mb is None else int(self.prefix_cache_mb * 1024 * 1024)

    @property
    def prefix_store_dtype(self):
        """The torch dtype cached prefixes are kept in (None: as computed)."""
        import torch

        name = PREFIX_DTYPES[self.prefix_cache_dtype]
        return getattr(torch, name) if name else None

    @property
    def open_access(self) -> bool:
        """No API keys: every caller on this machine may use and change every task."""
        return self.api_keys is None


def _whole(flag: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DataError(f"{flag} {value!r}: give a whole number from {low:,} to {high:,}.")


def _number(flag: str, value, low: float, high: float) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        raise DataError(f"{flag} {value!r}: give a number from {low:g} to {high:g}.")
