"""The registry's storage: prompts, their immutable content-addressed versions, and movable labels.

SQLAlchemy Core over SQLite (the default, one file in the user data dir) or PostgreSQL (a URL, through
psycopg). A version is identified by the SHA-256 of its content, so adding the same content twice
gives back the existing version. Version numbers are given out one writer at a time: SQLite takes
its write lock at BEGIN (``BEGIN IMMEDIATE``), PostgreSQL locks the prompt's row (``FOR UPDATE``); a
writer that still collides retries, so concurrent writers never lose or duplicate a version.

A version number is never given out twice for one name, even after versions (or the whole prompt) are
removed: ``pt_numbering`` keeps each name's highest number, so a pin to ``name@v2`` can never come to
mean other content. Removing a version that a label points at is refused unless forced, and then says
which labels were dropped. On PostgreSQL every label change also sends ``NOTIFY prompttune_labels, 'name'``
(delivered at commit), so a server following ``name@label`` reloads at once instead of at its next poll.
``pt_numbering`` is the only table added since the first schema; opening an older database creates it
(nothing else changes), and an older read-only database still reads.
"""

from __future__ import annotations

import json
import random
import time
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from prompttune.registry.database import default_location, explain, is_read_only, locate, make_engine
from prompttune.registry.names import (
    HASH_PREFIX_RE,
    MAX_VERSION,
    VERSION_RE,
    Ref,
    RegistryError,
    check_label,
    check_name,
    parse_ref,
)
from prompttune.registry.schema import (
    FIRST_SCHEMA,
    KINDS,
    Removal,
    Version,
    content_hash,
    labels,
    metadata,
    now,
    numbering,
    prompts,
    versions,
)

__all__ = ["KINDS", "LABELS_CHANNEL", "Registry", "Removal", "Version", "content_hash", "default_location"]
LABELS_CHANNEL = "prompttune_labels"  # PostgreSQL: NOTIFY with the prompt's name when its labels change


def _labels_changed(conn, name: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_notify(LABELS_CHANNEL, name)))


class Registry:
    """Templates and soft-prompt artifacts, each with numbered, content-addressed versions and labels."""

    def __init__(self, location: str | None = None):
        self.where = locate(location)  # refuses unsupported databases and unusable paths, naming the flag
        self.location = self.where.text
        self.url = self.where.url
        try:
            self.engine = make_engine(self.where)
            with self.engine.connect() as conn:
                missing = {t.name for t in metadata.sorted_tables} - set(sa.inspect(conn).get_table_names())
        except DBAPIError as e:
            raise explain(self.where, e, "open") from None
        self._writes_refused: RegistryError | None = None
        if missing:
            try:
                self._retry(self._create_tables)
            except RegistryError as e:
                # A read-only database made before pt_numbering existed still reads; a write says why not.
                if missing & FIRST_SCHEMA:
                    raise
                self._writes_refused = e

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
        if self._writes_refused is not None:
            raise self._writes_refused
        for attempt in range(attempts):
            try:
                with self.engine.connect().execution_options(write=True) as conn, conn.begin():
                    return work(conn)
            except DBAPIError as e:
                transient = isinstance(e, IntegrityError) or (
                    isinstance(e, OperationalError) and ("locked" in str(e) or "deadlock" in str(e).lower())
                )
                if not transient or is_read_only(e) or attempt == attempts - 1:
                    raise explain(self.where, e) from None
                time.sleep(random.uniform(0.005, 0.05) * (1 + attempt))
        raise AssertionError("unreachable")

    @contextmanager
    def _reading(self):
        """A connection for reads; a driver error becomes a RegistryError naming the database."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except DBAPIError as e:
            raise explain(self.where, e) from None

    @staticmethod
    def _raise_high_water(conn, name: str, pid: int) -> None:
        """Record the highest number ``name`` has had before any of its versions go."""
        top = conn.execute(sa.select(sa.func.max(versions.c.number)).where(versions.c.prompt_id == pid)).scalar()
        kept = conn.execute(sa.select(numbering.c.last_number).where(numbering.c.name == name)).scalar()
        if kept is None:
            conn.execute(numbering.insert().values(name=name, last_number=top or 0))
        elif (top or 0) > kept:
            conn.execute(numbering.update().where(numbering.c.name == name).values(last_number=top))

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
            kept = conn.execute(sa.select(numbering.c.last_number).where(numbering.c.name == name)).scalar()
            number = max(last or 0, kept or 0) + 1  # never a number this name has had before
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
            _labels_changed(conn, target.name)

        self._retry(work)
        return self.get(target.ref, payload=False)

    def remove_label(self, name: str, label: str) -> None:
        check_label(label)

        def work(conn) -> None:
            pid = self._prompt_id(conn, name)
            gone = conn.execute(labels.delete().where(labels.c.prompt_id == pid, labels.c.label == label)).rowcount
            if not gone:
                raise RegistryError(f"registry: {name!r} has no label {label!r}.")
            _labels_changed(conn, name)

        self._retry(work)

    def remove(self, ref: str | Ref, force: bool = False) -> Removal:
        """Remove one version (``name@v3``), or a whole prompt (``name``) with all its versions and labels.

        Labels that point at what goes are dropped only with ``force``; without it the removal is refused
        and the message names them. The removed numbers are never given out again for this name.
        """
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        whole = ref.selector is None
        target = None if whole else self.get(ref, payload=False)

        def work(conn) -> Removal:
            pid = self._prompt_id(conn, ref.name)
            conn.execute(sa.select(prompts.c.id).where(prompts.c.id == pid).with_for_update())
            if whole:
                q = sa.select(versions.c.id, versions.c.number).where(versions.c.prompt_id == pid)
                numbers = dict(conn.execute(q).all())
            else:
                numbers = {self._ids(conn, ref.name, target.number)[1]: target.number}
            dropped = {
                label: f"{ref.name}@v{numbers[vid]}"
                for vid, label in conn.execute(
                    sa.select(labels.c.version_id, labels.c.label)
                    .where(labels.c.version_id.in_(list(numbers)))
                    .order_by(labels.c.label)
                )
            }
            if dropped and not force:
                pointing = ", ".join(f"{label} -> {at}" for label, at in dropped.items())
                raise RegistryError(
                    f"registry: {ref} is labelled ({pointing}); removing it would leave "
                    + ", ".join(f"{ref.name}@{label}" for label in dropped)
                    + f" naming nothing. Point the label elsewhere first (prompttune registry label "
                    f"{ref.name}@vN LABEL), or remove anyway with --force (the labels are dropped)."
                )
            self._raise_high_water(conn, ref.name, pid)
            if dropped:
                _labels_changed(conn, ref.name)
            conn.execute(labels.delete().where(labels.c.version_id.in_(list(numbers))))
            conn.execute(versions.delete().where(versions.c.id.in_(list(numbers))))
            left = conn.execute(sa.select(sa.func.count()).where(versions.c.prompt_id == pid)).scalar()
            if not left:  # the last version went: the name is free (its numbers stay used)
                conn.execute(labels.delete().where(labels.c.prompt_id == pid))
                conn.execute(prompts.delete().where(prompts.c.id == pid))
            return Removal([f"{ref.name}@v{n}" for n in sorted(numbers.values())], dropped)

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
        with self._reading() as conn:
            pid = self._prompt_id(conn, ref.name)
            q = self._select(payload).where(versions.c.prompt_id == pid)
            sel = ref.selector
            if sel is None:
                rows = conn.execute(q.order_by(versions.c.number.desc()).limit(1)).all()
            elif m := VERSION_RE.fullmatch(sel):
                number = int(m.group(1))
                rows = conn.execute(q.where(versions.c.number == number)).all() if number <= MAX_VERSION else []
            else:
                vid = conn.execute(
                    sa.select(labels.c.version_id).where(labels.c.prompt_id == pid, labels.c.label == sel)
                ).scalar()
                if vid is not None:
                    rows = conn.execute(q.where(versions.c.id == vid)).all()
                elif not HASH_PREFIX_RE.fullmatch(sel.lower()):
                    rows = []
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
        with self._reading() as conn:
            q = self._select(payload=False).order_by(prompts.c.name, versions.c.number)
            if name is not None:
                q = q.where(versions.c.prompt_id == self._prompt_id(conn, name))
            rows = conn.execute(q).all()
            labels_of = self._labels_by_version(conn)
        return [self._version(r, labels_of, payload=False) for r in rows]

    def names(self) -> list[tuple[str, str, int, dict[str, int]]]:
        """(name, kind, number of versions, {label: version number}) per prompt."""
        with self._reading() as conn:
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
