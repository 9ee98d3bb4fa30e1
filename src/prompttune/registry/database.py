"""Where the registry's database lives, how it is opened, and what its failures mean to the user.

The location is ``--db`` when given, else ``$PROMPTTUNE_REGISTRY``, else ``registry.db`` in the user data
dir. Only SQLite (a file path or ``sqlite:///PATH``) and PostgreSQL (``postgresql://...``, through
psycopg) are supported: the store relies on SQLite's ``BEGIN IMMEDIATE`` and PostgreSQL's
``FOR UPDATE`` to give out version numbers one writer at a time, so any other database is refused up
front rather than half-working. Driver errors become :class:`RegistryError` messages that name the flag
the location came from and what to do (a read-only file, a missing folder, an unreachable server).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError

from prompttune.registry.names import RegistryError

ENV = "PROMPTTUNE_REGISTRY"
FORMS = "a file path (SQLite, e.g. --db ./registry.db) or a PostgreSQL URL (postgresql://user@host/dbname)"


@dataclass(frozen=True)
class Location:
    text: str  # as given (a path or a URL)
    flag: str  # where it came from: "--db", "$PROMPTTUNE_REGISTRY" or "default"
    url: str = ""  # the SQLAlchemy URL
    path: Path | None = None  # the SQLite file, when it is one

    @property
    def shown(self) -> str:
        """The location as a message shows it: a URL's password hidden."""
        if "://" not in self.text:
            return self.text
        try:
            return sa.make_url(self.text).render_as_string(hide_password=True)
        except Exception:  # not even a URL: show the scheme only
            return self.text.split("://", 1)[0] + "://..."

    @property
    def where(self) -> str:
        if self.flag == "default":
            return f"registry {self.shown} (the default; choose another with --db or ${ENV})"
        if self.flag == "--db":
            return f"--db {self.shown}"
        return f"${ENV}={self.shown}"

    def error(self, what: str) -> RegistryError:
        return RegistryError(f"{self.where}: {what}")


def default_location() -> str:
    """$PROMPTTUNE_REGISTRY (a path or database URL), else registry.db in the user data dir."""
    env = os.environ.get(ENV)
    if env:
        return env
    from platformdirs import user_data_dir

    return str(Path(user_data_dir("prompttune")) / "registry.db")


def locate(location: str | None) -> Location:
    """The location checked and turned into a SQLAlchemy URL (the SQLite file's folder is created)."""
    if location:
        flag = "--db"
    elif os.environ.get(ENV):
        flag, location = f"${ENV}", os.environ[ENV]
    else:
        flag, location = "default", default_location()
    loc = Location(location, flag)
    scheme = location.split("://", 1)[0].lower() if "://" in location else ""
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return Location(location, flag, "postgresql+psycopg://" + location.split("://", 1)[1])
    if scheme and scheme != "sqlite":
        raise loc.error(f"the registry cannot use a {scheme!r} database; give {FORMS}.")
    if scheme == "sqlite":
        try:
            database = sa.make_url(location).database
        except sa.exc.ArgumentError:
            raise loc.error(f"not a valid SQLite URL; write sqlite:///PATH, or give {FORMS}.") from None
        if not database or database == ":memory:" or database.startswith("file:"):
            return Location(location, flag, location)
        path = Path(database)
    else:
        path = Path(location)
    path = path.expanduser().resolve()
    if path.is_dir():
        raise loc.error(f"{path} is a folder; give the database file's path, e.g. {path / 'registry.db'}.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise loc.error(
            f"cannot create the folder {path.parent} for the database ({e.strerror}); "
            f"give a path in a folder you can write, e.g. --db ./registry.db."
        ) from None
    return Location(location, flag, f"sqlite:///{path}", path)


def make_engine(loc: Location) -> sa.Engine:
    if not loc.url.startswith("sqlite"):
        return sa.create_engine(loc.url, pool_pre_ping=True)
    engine = sa.create_engine(loc.url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # SQLAlchemy, not the driver, says when a transaction begins
        try:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as e:  # a read-only file not in WAL mode yet: it still reads
            if "readonly" not in str(e):
                raise
        if loc.path is not None and loc.path.exists() and not os.access(loc.path, os.W_OK):
            # a read-only file (chmod, or immutable for root): writes would otherwise land in a writable -wal file
            dbapi_conn.execute("PRAGMA query_only=ON")
        dbapi_conn.execute("PRAGMA busy_timeout=60000")
        # WAL + NORMAL: a crash cannot corrupt the file; only the OS losing power can undo the last commits.
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    @event.listens_for(engine, "begin")
    def _begin(conn):
        # Writers take the write lock at BEGIN, not at their first write, so two writers never both read
        # the same "next version number"; readers do not block each other.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

    return engine


def is_read_only(e: DBAPIError) -> bool:
    text = str(e.orig).lower()
    return "readonly database" in text or "read-only" in text


def explain(loc: Location, e: DBAPIError, doing: str = "use") -> RegistryError:
    """A driver error as a message that says what is wrong with the database and what to do."""
    reason = (str(e.orig).strip().splitlines() or [type(e.orig).__name__])[0]
    if loc.path is not None:
        if is_read_only(e):
            return loc.error(
                f"the registry file is read-only, so it cannot be changed ({reason}). Make it writable "
                f"(chmod u+w {loc.path}), or copy it and point --db (or ${ENV}) at the copy."
            )
        if "unable to open" in reason.lower():
            return loc.error(
                f"cannot open the database file ({reason}). SQLite needs to read the file and to write in its "
                f"folder ({loc.path.name}-wal, {loc.path.name}-shm); check both, or point --db elsewhere."
            )
        if "not a database" in reason.lower():
            return loc.error(
                f"{loc.path} is not a registry database (not an SQLite file: {reason}); point --db (or ${ENV}) "
                "at a registry file, or at a new path to start one."
            )
    if is_read_only(e) or "permission denied" in reason.lower():
        return loc.error(f"the database refuses the change ({reason}); use a registry you can write.")
    return loc.error(f"cannot {doing} the database ({reason}). Check that it is {FORMS}, and reachable.")
