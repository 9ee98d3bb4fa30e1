"""Tasks that follow a registry label (``name@label``): when the label moves, the task is loaded again and
swapped in between requests (``TaskTable.replace``); requests already holding the old version finish on it.

One thread checks every ``--registry-poll-s`` seconds: one read of every prompt's labels, whatever the number
of tasks (``Registry.names``), then a reload of each task whose label now names another version. With a
PostgreSQL registry a second thread LISTENs on ``prompttune_labels`` (the registry NOTIFYs there on every
label change, at commit) and wakes the checker at once; the polling stays as the safety net should that
connection drop. A label that is removed, or a version that fails to load (say, for another model), leaves
the task serving what it has; the reason is logged once per version.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from prompttune.core.errors import PromptTuneError

log = logging.getLogger("prompttune.serve")
LISTEN_TIMEOUT_S = 1.0  # how often the listener looks up from the connection (to see a stop)


class LabelFollower:
    def __init__(self, table, poll_s: float, on_swap: Callable[[str], None] | None = None):
        self.table, self.poll_s, self.on_swap = table, poll_s, on_swap
        self._wake, self._stop = threading.Event(), threading.Event()
        self._failed: dict[str, int] = {}  # task -> the version number that failed to load (logged once)
        self._listener: threading.Thread | None = None
        self._thread = threading.Thread(target=self._run, name="prompttune-follow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        for t in (self._thread, self._listener):
            if t is not None and t.is_alive():
                t.join(timeout)

    def wake(self) -> None:
        """Check now (a notification came)."""
        self._wake.set()

    # --- checking ----------------------------------------------------------------------------------------
    def check(self) -> list[str]:
        """Reload every followed task whose label has moved; the names of those swapped in."""
        followed = [t for t in self.table.all() if t.follows]
        if not followed:
            return []
        registry = self.table.registry_client()
        self._listen_if_postgres(registry.url)
        labels = {name: at for name, _, _, at in registry.names()}
        swapped = []
        for old in followed:
            name, selector = old.follows.split("@", 1)
            number = labels.get(name, {}).get(selector)
            if number is None:  # the label is gone (or the selector is a hash prefix): ask for it
                try:
                    number = registry.get(old.follows, payload=False).number
                except PromptTuneError as e:
                    self._once(old.name, -1, f"task {old.name}: {e}; it keeps serving {old.shown}.")
                    continue
            if number == old.version_number or self._failed.get(old.name) == number:
                continue
            try:
                new = self.table.replace(old)
            except PromptTuneError as e:
                self._once(old.name, number, f"task {old.name}: {old.follows} moved to v{number}, which cannot "
                                             f"be served ({e}); it keeps serving {old.shown}.")  # fmt: skip
                continue
            if new is not None:
                self._failed.pop(old.name, None)
                swapped.append(old.name)
                log.warning("task %s: %s now serves %s", old.name, old.follows, new.shown)
                if self.on_swap:
                    self.on_swap(old.name)
        return swapped

    def _once(self, task: str, number: int, message: str) -> None:
        if self._failed.get(task) != number:
            self._failed[task] = number
            log.warning(message)

    def _run(self) -> None:
        while not self._stop.is_set():  # a first check at once: it also starts listening on PostgreSQL
            try:
                self.check()
            except Exception as e:  # noqa: BLE001 - the registry is unreachable for now: try again next time
                log.warning("registry labels could not be checked (%s: %s); trying again.", type(e).__name__, e)
            self._wake.wait(self.poll_s)
            self._wake.clear()

    # --- PostgreSQL: LISTEN ---------------------------------------------------------------------------------
    def _listen_if_postgres(self, url: str) -> None:
        if self._listener is not None or not url.startswith("postgresql"):
            return
        import sqlalchemy as sa

        dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._listener = threading.Thread(target=self._listen, args=(dsn,), name="prompttune-listen", daemon=True)
        self._listener.start()

    def _listen(self, dsn: str) -> None:
        import psycopg

        from prompttune.registry.store import LABELS_CHANNEL

        while not self._stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {LABELS_CHANNEL}")
                    self._wake.set()  # whatever moved while nobody listened
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=LISTEN_TIMEOUT_S):
                            self._wake.set()
            except Exception as e:  # noqa: BLE001 - polling goes on; listen again after a pause
                log.warning("registry notifications lost (%s: %s); polling until they are back.", type(e).__name__, e)
                self._stop.wait(self.poll_s)
