"""The registry's storage: prompts, their immutable content-addressed versions, and movable labels.

SQLAlchemy Core over SQLite (the default, one file in the user data dir) or PostgreSQL (a URL, through
psycopg). A version is identified by the SHA-256 of its content, so adding the same content twice
gives back the existing version. Version numbers are given out one writer at a time: SQLite takes
its write lock at BEGIN (``BEGIN IMMEDIATE``), PostgreSQL locks the prompt's row (``FOR UPDATE``); a
writer that still collides retries, so concurrent writers never lose or duplicate a version.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from prompttune.registry.names import VERSION_RE, Ref, RegistryError, check_label, check_name, parse_ref

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


def content_hash(kind: str, content: dict, payload: bytes | None) -> str:
    body = {
        "kind": kind,
        "content": content,
        "payload_sha256": hashlib.sha256(payload).hexdigest() if payload is not None else None,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def default_location() -> str:
    """$PROMPTTUNE_REGISTRY (a path or database URL), else registry.db in the user data dir."""
    env = os.environ.get("PROMPTTUNE_REGISTRY")
    if env:
        return env
    from platformdirs import user_data_dir

    return str(Path(user_data_dir("prompttune")) / "registry.db")


def database_url(location: str) -> str:
    if location.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + location.split("://", 1)[1]
    if "://" in location:
        return location
    path = Path(location).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # SQLAlchemy, not the driver, says when a transaction begins
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA busy_timeout=60000")
            # WAL + NORMAL: a crash cannot corrupt the file; only the OS losing power can undo the last commits.
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")

        @event.listens_for(engine, "begin")
        def _begin(conn):
            # Writers take the write lock at BEGIN, not at their first write, so two writers never both read
            # the same "next version number"; readers do not block each other.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


class Registry:
    """Templates and soft-prompt artifacts, each with numbered, content-addressed versions and labels."""

    def __init__(self, location: str | None = None):
        self.location = location or default_location()
        self.url = database_url(self.location)
        try:
            self.engine = _make_engine(self.url)
            self._retry(self._create_tables)
        except (OperationalError, DBAPIError) as e:
            shown = sa.make_url(self.url).render_as_string(hide_password=True)
            raise RegistryError(
                f"registry {shown}: cannot open the database ({e.orig}). Check --db / $PROMPTTUNE_REGISTRY."
            ) from None

    @staticmethod
    def _create_tables(conn) -> None:
        try:
            metadata.create_all(conn, checkfirst=True)
        except sa.exc.ProgrammingError as e:  # another process created them between the check and CREATE
            if "already exists" not in str(e):
                raise
            raise IntegrityError(str(e), None, e.orig) from None  # retried; the next check finds them

    def close(self) -> None:
        self.engine.dispose()

    def _retry(self, work, attempts: int = 60):
        """Run ``work(conn)`` in one transaction; retry when a concurrent writer got there first."""
        for attempt in range(attempts):
            try:
                with self.engine.connect().execution_options(write=True) as conn, conn.begin():
                    return work(conn)
            except (IntegrityError, OperationalError) as e:
                transient = isinstance(e, IntegrityError) or "locked" in str(e) or "deadlock" in str(e).lower()
                if not transient or attempt == attempts - 1:
                    raise
                time.sleep(random.uniform(0.005, 0.05) * (1 + attempt))
        raise AssertionError("unreachable")

    # --- writing --------------------------------------------------------------------------------------
    def add(
        self, name: str, kind: str, content: dict, payload: bytes | None = None, provenance: dict | None = None
    ) -> tuple[Version, bool]:
        """Add a version (or find the same content already there). Returns (version, created)."""
        check_name(name)
        if kind not in KINDS:
            raise RegistryError(f"registry: kind {kind!r} is not one of {', '.join(KINDS)}.")
        digest = content_hash(kind, content, payload)
        text = json.dumps(content, sort_keys=True, ensure_ascii=False)
        prov = {"time": now(), **(provenance or {})}

        def work(conn) -> tuple[int, bool]:
            row = conn.execute(sa.select(prompts.c.id, prompts.c.kind).where(prompts.c.name == name)).first()
            if row is None:
                pid = conn.execute(prompts.insert().values(name=name, kind=kind, created=now())).inserted_primary_key[0]
            else:
                pid, have = row
                if have != kind:
                    raise RegistryError(f"registry: {name!r} holds {have}s; a {kind} cannot be added to it.")
            # One writer at a time per prompt on PostgreSQL (SQLite already holds the database's write lock).
            conn.execute(sa.select(prompts.c.id).where(prompts.c.id == pid).with_for_update())
            same = conn.execute(
                sa.select(versions.c.number).where(versions.c.prompt_id == pid, versions.c.hash == digest)
            ).scalar()
            if same is not None:
                return same, False
            last = conn.execute(sa.select(sa.func.max(versions.c.number)).where(versions.c.prompt_id == pid)).scalar()
            number = (last or 0) + 1
            conn.execute(
                versions.insert().values(
                    prompt_id=pid,
                    number=number,
                    hash=digest,
                    content=text,
                    payload=payload,
                    provenance=json.dumps(prov, sort_keys=True, ensure_ascii=False),
                    created=prov["time"],
                )
            )
            return number, True

        number, created = self._retry(work)
        return self.get(Ref(name, f"v{number}")), created

    def set_label(self, ref: str | Ref, label: str) -> Version:
        """Point ``label`` (e.g. production) at the version ``ref`` names; it moves if it was elsewhere."""
        check_label(label)
        target = self.get(ref, payload=False)

        def work(conn) -> None:
            pid, vid = self._ids(conn, target.name, target.number)
            conn.execute(labels.delete().where(labels.c.prompt_id == pid, labels.c.label == label))
            conn.execute(labels.insert().values(prompt_id=pid, label=label, version_id=vid))

        self._retry(work)
        return self.get(target.ref, payload=False)

    def remove_label(self, name: str, label: str) -> None:
        check_label(label)

        def work(conn) -> None:
            pid = self._prompt_id(conn, name)
            gone = conn.execute(labels.delete().where(labels.c.prompt_id == pid, labels.c.label == label)).rowcount
            if not gone:
                raise RegistryError(f"registry: {name!r} has no label {label!r}.")

        self._retry(work)

    def remove(self, ref: str | Ref) -> list[str]:
        """Remove one version (``name@v3``), or a whole prompt (``name``) with all its versions and labels."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        whole = ref.selector is None
        target = None if whole else self.get(ref, payload=False)

        def work(conn) -> list[str]:
            pid = self._prompt_id(conn, ref.name)
            if whole:
                numbers = conn.execute(sa.select(versions.c.number).where(versions.c.prompt_id == pid)).scalars()
                removed = [f"{ref.name}@v{n}" for n in numbers]
                conn.execute(labels.delete().where(labels.c.prompt_id == pid))
                conn.execute(versions.delete().where(versions.c.prompt_id == pid))
                conn.execute(prompts.delete().where(prompts.c.id == pid))
                return removed
            _, vid = self._ids(conn, ref.name, target.number)
            conn.execute(labels.delete().where(labels.c.version_id == vid))
            conn.execute(versions.delete().where(versions.c.id == vid))
            return [target.ref]

        return self._retry(work)

    # --- reading --------------------------------------------------------------------------------------
    def _prompt_id(self, conn, name: str) -> int:
        pid = conn.execute(sa.select(prompts.c.id).where(prompts.c.name == check_name(name))).scalar()
        if pid is None:
            raise RegistryError(f"registry: no prompt named {name!r}; see `prompttune registry list`.")
        return pid

    def _ids(self, conn, name: str, number: int) -> tuple[int, int]:
        pid = self._prompt_id(conn, name)
        vid = conn.execute(
            sa.select(versions.c.id).where(versions.c.prompt_id == pid, versions.c.number == number)
        ).scalar()
        if vid is None:
            raise RegistryError(f"registry: {name}@v{number} does not exist.")
        return pid, vid

    def _select(self, payload: bool):
        cols = [
            prompts.c.name,
            prompts.c.kind,
            versions.c.id,
            versions.c.number,
            versions.c.hash,
            versions.c.content,
            versions.c.provenance,
            versions.c.created,
        ]
        if payload:
            cols.append(versions.c.payload)
        return sa.select(*cols).select_from(versions.join(prompts, versions.c.prompt_id == prompts.c.id))

    def _labels_by_version(self, conn, version_ids: list[int] | None = None) -> dict[int, list[str]]:
        q = sa.select(labels.c.version_id, labels.c.label).order_by(labels.c.label)
        if version_ids is not None:
            q = q.where(labels.c.version_id.in_(version_ids))
        out: dict[int, list[str]] = {}
        for vid, label in conn.execute(q):
            out.setdefault(vid, []).append(label)
        return out

    def _version(self, row, labels_of: dict, payload: bool) -> Version:
        return Version(
            name=row.name,
            kind=row.kind,
            number=row.number,
            hash=row.hash,
            content=json.loads(row.content),
            provenance=json.loads(row.provenance),
            created=row.created,
            labels=labels_of.get(row.id, []),
            payload=row.payload if payload else None,
        )

    def get(self, ref: str | Ref, payload: bool = True) -> Version:
        """The version a reference names: name (latest), name@vN, name@label or name@<hash prefix>."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        with self.engine.connect() as conn:
            pid = self._prompt_id(conn, ref.name)
            q = self._select(payload).where(versions.c.prompt_id == pid)
            sel = ref.selector
            if sel is None:
                rows = conn.execute(q.order_by(versions.c.number.desc()).limit(1)).all()
            elif m := VERSION_RE.match(sel):
                rows = conn.execute(q.where(versions.c.number == int(m.group(1)))).all()
            else:
                vid = conn.execute(
                    sa.select(labels.c.version_id).where(labels.c.prompt_id == pid, labels.c.label == sel)
                ).scalar()
                if vid is not None:
                    rows = conn.execute(q.where(versions.c.id == vid)).all()
                else:
                    rows = conn.execute(q.where(versions.c.hash.startswith(sel.lower(), autoescape=True))).all()
                    if len(rows) > 1:
                        raise RegistryError(f"registry: {ref} matches {len(rows)} versions; give more of the hash.")
            if not rows:
                raise RegistryError(
                    f"registry: {ref} names no version (not a version number, label or hash prefix of "
                    f"{ref.name!r}); see `prompttune registry show {ref.name}`."
                )
            return self._version(rows[0], self._labels_by_version(conn, [rows[0].id]), payload)

    def versions(self, name: str | None = None) -> list[Version]:
        """Every version (of one prompt, or of all), without payloads, by name then number."""
        with self.engine.connect() as conn:
            q = self._select(payload=False).order_by(prompts.c.name, versions.c.number)
            if name is not None:
                q = q.where(versions.c.prompt_id == self._prompt_id(conn, name))
            rows = conn.execute(q).all()
            labels_of = self._labels_by_version(conn)
        return [self._version(r, labels_of, payload=False) for r in rows]

    def names(self) -> list[tuple[str, str, int, dict[str, int]]]:
        """(name, kind, number of versions, {label: version number}) per prompt."""
        with self.engine.connect() as conn:
            counts = conn.execute(
                sa.select(prompts.c.name, prompts.c.kind, sa.func.count(versions.c.id), sa.func.max(versions.c.number))
                .select_from(prompts.outerjoin(versions, versions.c.prompt_id == prompts.c.id))
                .group_by(prompts.c.name, prompts.c.kind)
                .order_by(prompts.c.name)
            ).all()
            lab = conn.execute(
                sa.select(prompts.c.name, labels.c.label, versions.c.number)
                .select_from(labels.join(prompts).join(versions, labels.c.version_id == versions.c.id))
                .order_by(labels.c.label)
            ).all()
        by_name: dict[str, dict[str, int]] = {}
        for name, label, number in lab:
            by_name.setdefault(name, {})[label] = number
        return [(n, k, c, by_name.get(n, {})) for n, k, c, _ in counts]
