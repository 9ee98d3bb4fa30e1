"""The budget for cached task prefixes (``--prefix-cache-mb``): least recently used prefixes are evicted and
computed again when their task is next asked for.

An owner is what holds one task's constant prefix as keys/values: a ``PrefixModel`` (label-word and head
tasks: ``cached_prefix()`` computes it, ``clear_cache()`` drops it) or a ``Generator`` (generation templates:
it computes its prefix within ``complete`` and keeps it in ``_prefixes``). The worker wraps every forward pass
in ``use(owners)``: each owner's prefix is made resident (a hit, or a miss that computes it after evicting
others to make room) and pinned until the pass ends, so a prefix is never dropped while a batch reads it.
``groups`` splits a batch's tasks so that each group's prefixes fit the budget together. At rest the cached
bytes never exceed the budget; a prefix larger than the whole budget is computed for its batch and dropped.
Removed or replaced tasks are forgotten: their prefixes no longer count and are freed with their task.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from prompttune.core.lead_kv import kv_bytes

MB = 1024 * 1024


def held_bytes(owner) -> int:
    """Bytes of the prefix keys/values ``owner`` holds now."""
    if hasattr(owner, "cached_prefix_bytes"):  # a PrefixModel
        return owner.cached_prefix_bytes()
    prefixes = getattr(owner, "_prefixes", None)  # a Generator's cache of template prefixes
    return sum(kv_bytes(kv) for kv in prefixes.values()) if prefixes else 0


def _compute(owner) -> None:
    if hasattr(owner, "cached_prefix"):
        owner.cached_prefix()  # a Generator computes its prefix in the call that needs it


def _drop(owner) -> None:
    if hasattr(owner, "clear_cache"):
        owner.clear_cache()
    elif getattr(owner, "_prefixes", None) is not None:
        owner._prefixes.clear()


class PrefixCache:
    """Resident prefixes in least-recently-used order within ``budget`` bytes (None: no limit). Thread-safe."""

    def __init__(self, budget: int | None = None):
        self.budget = budget
        self.hits = self.misses = self.evictions = 0
        self._held: OrderedDict[int, tuple[object, int]] = OrderedDict()  # id -> (owner, bytes), oldest first
        self._sizes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # last size seen, kept after eviction
        self._gone: weakref.WeakSet = weakref.WeakSet()  # forgotten owners (removed or replaced tasks)
        self._pins: Counter[int] = Counter()
        self._lock = threading.RLock()

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self._held.values())

    def admit(self, owner) -> None:
        """A task just loaded: compute its prefix now (not on its first request), within the budget."""
        with self._lock:
            _compute(owner)
            self._account(owner)
            self._shrink()

    def forget(self, owner) -> None:
        """A task removed or replaced: its prefix stops counting (requests still holding it finish with it)."""
        with self._lock:
            self._held.pop(id(owner), None)
            try:
                self._gone.add(owner)
            except TypeError:  # not weak-referenceable: nothing to remember
                pass

    def groups(self, owners: Sequence) -> list[list]:
        """``owners`` in order, split so that each group's known prefix sizes fit the budget together."""
        if self.budget is None:
            return [list(owners)]
        out: list[list] = []
        group, total = [], 0
        for o in owners:
            size = self._size(o)
            if group and total + size > self.budget:
                out.append(group)
                group, total = [], 0
            group.append(o)
            total += size
        return out + [group] if group else out

    @contextmanager
    def use(self, owners: Sequence) -> Iterator[None]:
        """Every owner's prefix resident and pinned while the body runs (hits and misses counted)."""
        owners = list({id(o): o for o in owners}.values())
        with self._lock:
            for o in owners:
                self._pins[id(o)] += 1
            try:
                for o in owners:
                    self._acquire(o)
            except BaseException:
                self._unpin(owners)
                raise
        try:
            yield
        finally:
            with self._lock:
                self._unpin(owners)
                for o in owners:  # a Generator computed its prefix during the body
                    self._account(o)
                self._shrink()

    # --- inside the lock ------------------------------------------------------------------------------
    def _size(self, owner) -> int:
        try:
            return self._sizes.get(owner, 0)
        except TypeError:
            return 0

    def _acquire(self, owner) -> None:
        if id(owner) in self._held and held_bytes(owner):
            self.hits += 1
            self._held.move_to_end(id(owner))
            return
        self.misses += 1
        self._held.pop(id(owner), None)  # dropped behind our back: count it again once computed
        self._shrink(room=self._size(owner))
        _compute(owner)
        self._account(owner)

    def _account(self, owner) -> None:
        size = held_bytes(owner)
        if owner in self._gone:
            return
        try:
            self._sizes[owner] = size
        except TypeError:
            pass
        if size:
            self._held[id(owner)] = (owner, size)
            self._held.move_to_end(id(owner))
        else:
            self._held.pop(id(owner), None)

    def _shrink(self, room: int = 0) -> None:
        """Evict unpinned prefixes, oldest first, until ``room`` more bytes fit the budget."""
        if self.budget is None:
            return
        while self.bytes + room > self.budget:
            victim = next((k for k in self._held if not self._pins[k]), None)
            if victim is None:
                return
            owner, _ = self._held.pop(victim)
            _drop(owner)
            self.evictions += 1

    def _unpin(self, owners) -> None:
        for o in owners:
            self._pins[id(o)] -= 1
            if self._pins[id(o)] <= 0:
                del self._pins[id(o)]
