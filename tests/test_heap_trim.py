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
    rss["now"] += 40 << 20  # the first step after a trim: what a step needs
    trim(11)
    rss["now"] += 40 << 20  # grew less than the threshold past it
    trim(12)
    assert len(trims) == 1
    rss["now"] += 40 << 20  # 80 MB over it: trimmed at once
    trim(13)
    assert len(trims) == 2


def test_a_step_that_needs_its_memory_back_is_not_trimmed_every_time(monkeypatch):
    """A trim hands back the step's working memory, which the next step takes again (200 MB here): that is not
    growth. Measured from just after the trim, every step was trimmed."""
    rss = {"now": 1_000 << 20}
    trims: list[int] = []

    def trimmed():
        trims.append(rss["now"])
        rss["now"] = 1_000 << 20

    monkeypatch.setattr(heap, "resident_bytes", lambda: rss["now"])
    monkeypatch.setattr(heap, "release_memory", trimmed)
    trim = heap.HeapTrim(growth=64 << 20, every=10)
    for step in range(1, 31):
        rss["now"] = max(rss["now"], 1_200 << 20)  # the step's working memory
        trim(step)
    assert len(trims) == 3  # steps 10, 20 and 30 (before: all 30 steps)


def test_resident_bytes_reads_this_process():
    assert heap.resident_bytes() > 10 << 20  # the interpreter and torch alone hold more than 10 MB
