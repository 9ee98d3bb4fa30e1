"""API keys: read from a file, kept only as SHA-256 digests, compared in constant time.

The file holds one key a line (``#`` starts a comment, blank lines are skipped):

    sk-team-a-3f9c...                 tasks=sentiment,topics
    sha256:9f86d081884c7d65...        admin
    sk-reader-77a1...

A line is a key (or ``sha256:<hex>``, its digest, so the file need not hold the secret itself), then
optional words: ``admin`` (may add and remove tasks) and ``tasks=NAME,NAME`` (may use only these tasks;
without it, every task). Clients send ``Authorization: Bearer KEY`` (what the openai client sends) or
``X-API-Key: KEY``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from prompttune.core.errors import DataError

MAX_KEYS = 10_000
MAX_KEY_FILE_BYTES = 4 * 1024 * 1024
MIN_KEY_CHARS = 16


@dataclass(frozen=True)
class ApiKey:
    digest: bytes  # SHA-256 of the key
    admin: bool = False
    tasks: frozenset[str] | None = None  # None: every task

    def may_use(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyStore:
    def __init__(self, keys: list[ApiKey]):
        self.keys = keys

    @classmethod
    def from_file(cls, path: str | Path) -> KeyStore:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"--api-keys {path}: file not found; give a file with one API key a line.")
        if path.stat().st_size > MAX_KEY_FILE_BYTES:
            raise DataError(f"--api-keys {path}: larger than {MAX_KEY_FILE_BYTES:,} bytes, the limit.")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise DataError(f"--api-keys {path}: not UTF-8 text.") from None
        keys: list[ApiKey] = []
        for n, line in enumerate(lines, start=1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            keys.append(_parse_line(words, f"--api-keys {path}, line {n}"))
            if len(keys) > MAX_KEYS:
                raise DataError(f"--api-keys {path}: more than {MAX_KEYS:,} keys, the limit.")
        if not keys:
            raise DataError(f"--api-keys {path}: no keys in the file; give one key a line.")
        if len({k.digest for k in keys}) != len(keys):
            raise DataError(f"--api-keys {path}: a key is listed twice; give each key one line.")
        return cls(keys)

    def find(self, key: str | None) -> ApiKey | None:
        """The key's entry, or None. Every stored digest is compared, each in constant time."""
        if not key:
            return None
        given = digest(key)
        found = None
        for entry in self.keys:
            if hmac.compare_digest(entry.digest, given):
                found = entry
        return found


def _parse_line(words: list[str], where: str) -> ApiKey:
    secret, options = words[0], words[1:]
    if secret.startswith("sha256:"):
        try:
            raw = bytes.fromhex(secret[7:])
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise DataError(f"{where}: 'sha256:' must be followed by 64 hex digits (the key's SHA-256).")
    else:
        if len(secret) < MIN_KEY_CHARS:
            raise DataError(f"{where}: a key of {len(secret)} characters; use at least {MIN_KEY_CHARS}.")
        raw = digest(secret)
    admin, tasks = False, None
    for word in options:
        if word == "admin":
            admin = True
        elif word.startswith("tasks="):
            tasks = frozenset(t for t in word[6:].split(",") if t)
            if not tasks:
                raise DataError(f"{where}: 'tasks=' needs task names, e.g. tasks=sentiment,topics.")
        else:
            raise DataError(f"{where}: unknown option {word!r}; use 'admin' or 'tasks=NAME,NAME'.")
    return ApiKey(raw, admin, tasks)


def key_from_headers(headers) -> str | None:
    auth = headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key")
