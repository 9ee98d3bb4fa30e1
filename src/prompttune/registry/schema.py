"""The registry's tables and the records read from them.

``pt_prompts`` (one row per name), ``pt_versions`` (immutable, content-addressed, numbered per name),
``pt_labels`` (movable pointers to versions) and ``pt_numbering`` (each name's highest version number,
which outlives removals so that a number is never given out twice). The first three are the first
schema; ``pt_numbering`` was added after it and is created when an older database is opened.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa

KINDS = ("template", "soft-prompt")

metadata = sa.MetaData()
prompts = sa.Table(
    "pt_prompts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("created", sa.String(40), nullable=False),
)
versions = sa.Table(
    "pt_versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("prompt_id", sa.Integer, sa.ForeignKey("pt_prompts.id"), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, index=True),
    sa.Column("content", sa.Text, nullable=False),  # JSON: a template spec, or an artifact's manifest
    sa.Column("payload", sa.LargeBinary, nullable=True),  # an artifact's weights.safetensors bytes
    sa.Column("provenance", sa.Text, nullable=False),  # JSON: author, time, model, data hash, metrics, ...
    sa.Column("created", sa.String(40), nullable=False),
    sa.UniqueConstraint("prompt_id", "number"),
    sa.UniqueConstraint("prompt_id", "hash"),
)
labels = sa.Table(
    "pt_labels",
    metadata,
    sa.Column("prompt_id", sa.Integer, sa.ForeignKey("pt_prompts.id"), primary_key=True),
    sa.Column("label", sa.String(128), primary_key=True),
    sa.Column("version_id", sa.Integer, sa.ForeignKey("pt_versions.id"), nullable=False),
)
# The highest version number each name has had, kept by name so that it outlives removed versions and
# removed prompts: the next version is max(this, the highest version present) + 1.
numbering = sa.Table(
    "pt_numbering",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("last_number", sa.Integer, nullable=False),
)
FIRST_SCHEMA = {"pt_prompts", "pt_versions", "pt_labels"}


@dataclass
class Version:
    name: str
    kind: str
    number: int
    hash: str
    content: dict
    provenance: dict
    created: str
    labels: list[str] = field(default_factory=list)
    payload: bytes | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.number}"


@dataclass
class Removal:
    versions: list[str]  # the references removed, e.g. ["p@v2"]
    labels: dict[str, str] = field(default_factory=dict)  # label -> the reference it pointed at (dropped)


def content_hash(kind: str, content: dict, payload: bytes | None) -> str:
    body = {
        "kind": kind,
        "content": content,
        "payload_sha256": hashlib.sha256(payload).hexdigest() if payload is not None else None,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
