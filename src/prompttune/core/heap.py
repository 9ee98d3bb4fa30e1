"""The process's heap: hand freed memory back to the system (glibc keeps it otherwise) and read resident memory.

Used by training steps and the server's batches (``HeapTrim``) and after a decoding step has restacked weights
(``core.decode_step``)."""

from __future__ import annotations

import os


def release_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it otherwise).

    Training allocates tensors of many sizes (rows of varied length) and glibc's heap keeps the freed
    blocks: resident memory drifts to twice what is in use. Trimming every few steps keeps peak RSS near
    the real need for ~1% of the time (trimming every step: RSS 1.75 -> 0.78 GB, +13% time; serving
    large blocks with mmap instead doubled the step time).
    """
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def resident_bytes() -> int:
    """This process's resident memory now (Linux: /proc/self/statm, ~10 us), or 0 where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class HeapTrim:
    """The heap keeper of training steps and of the server's batches: a call hands freed heap back
    (``release_memory``) every ``every`` steps, and as soon as resident memory has grown ``growth`` bytes past
    what a step needs (long rows of varied shapes grow the heap ~100 MB a step; a trim every step costs ~13% of a
    short-row step, so it happens only when needed).

    What a step needs is resident memory at the first call after a trim (a trim hands back the step's working
    memory too, which the next step takes again), the largest such level seen so far, as batches differ in
    shape. Measured from just after each trim, every step whose working memory passed ``growth`` looked like
    growth and was trimmed (a pack of four tasks: 61 trims in 60 steps, 14.95 examples/s; 20.9 without trims;
    docs/multitask.md)."""

    def __init__(self, growth: int = 64 << 20, every: int = 10):
        self.growth, self.every = growth, every
        self.need = resident_bytes()
        self.fresh = True  # the next call measures what a step needs

    def __call__(self, step: int) -> None:
        now = resident_bytes()
        if self.fresh:
            self.need, self.fresh = max(self.need, now), False
        elif step % self.every == 0 or now - self.need > self.growth:
            release_memory()
            self.fresh = True
