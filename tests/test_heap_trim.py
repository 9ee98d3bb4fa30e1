"""Training hands freed heap back to the OS when resident memory grows, not after every step."""

from __future__ import annotations

from prompttune.core import heap


def test_the_heap_is_trimmed_every_tenth_step_and_when_resident_memory_grew(monkeypatch):
    rss = {"now": 1_000 << 20}
    trims: list[int] = []
    monkeypatch.setattr(heap, "resident_bytes", lambda: rss["now"])
    monkeypatch.setattr(heap, "release_memory", lambda: trims.append(rss["now"]))
    trim = heap.HeapTrim(growth=64 << 20, every=10)
    for step in range(1, 10):  # memory steady: nothing until step 10
        trim(step)
    assert trims == []
    trim(10)
    assert len(trims) == 1
    rss["now"] += 40 << 20  # grew less than the threshold
    trim(11)
    assert len(trims) == 1
    rss["now"] += 40 << 20  # 80 MB over the last trim's level: trimmed at once
    trim(12)
    assert len(trims) == 2
    trim(13)  # measured again after the trim: the new level is the base
    assert len(trims) == 2


def test_resident_bytes_reads_this_process():
    assert heap.resident_bytes() > 10 << 20  # the interpreter and torch alone hold more than 10 MB
