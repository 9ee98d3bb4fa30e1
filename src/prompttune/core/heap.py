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
    (``release_memory``) every ``every`` steps, and as soon as resident memory has grown ``growth`` bytes since the
    last trim (long rows of varied shapes grow the heap ~100 MB a step; a trim every step costs ~13% of a short-row
    step, so it happens only when needed)."""

    def __init__(self, growth: int = 64 << 20, every: int = 10):
        self.growth, self.every = growth, every
        self.base = resident_bytes()

    def __call__(self, step: int) -> None:
        if step % self.every == 0 or resident_bytes() - self.base > self.growth:
            release_memory()
            self.base = resident_bytes()
