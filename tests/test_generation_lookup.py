"""Prompt-lookup decoding (``draft_tokens``): drafted tokens checked in one pass leave greedy output unchanged."""

from __future__ import annotations

import pytest

from prompttune.core.data import from_records
from prompttune.core.errors import DataError
from prompttune.core.generate import GenerationConfig
from prompttune.generation import lookup
from prompttune.generation.decode import greedy_batch
from prompttune.generation.task import GenerationTask

WORDS = ["a great movie", "the cat sat", "I loved it", "boring and bad", "a joy to watch", "what a waste"] * 2


def test_drafts_come_from_what_was_written_then_from_the_row_itself():
    drafts = lookup.NgramDrafts(3)
    drafts.note([5, 6, 7, 8, 9])
    assert drafts.propose([1, 6, 7], limit=8) == [8, 9]  # "6 7" was followed by "8 9" in written text
    assert drafts.propose([1, 6, 7], limit=1) == [8]  # never past the row's remaining tokens
    assert drafts.propose([4, 2, 3, 4], limit=8) == [2, 3, 4]  # the row's own earlier "4"
    assert drafts.propose([4, 2, 3, 4], limit=0) == []
    assert drafts.propose([11, 12], limit=8) == []  # nothing seen


@pytest.fixture(scope="module")
def task(tiny_backbone):
    template = {"user": "[soft]{{ input }}"}
    return GenerationTask.create(tiny_backbone, "prefix-tuning", {"num_virtual_tokens": 4}, template, seed=1)


@pytest.mark.parametrize(
    "settings",
    [
        {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0},
        {},  # the default repetition settings, applied at every drafted place
        {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "stop": (" t",)},
    ],
)
@pytest.mark.parametrize("slots", [4, None])
def test_drafted_decoding_writes_what_greedy_decoding_writes(task, tiny_backbone, settings, slots, monkeypatch):
    rows = from_records([{"input": w} for w in WORDS]).rows
    ids = [x.ids for x in task.model.encode(rows, targets=False)]
    prefix = task.model.cached_prefix() or None
    runs = []
    real = tiny_backbone.run
    monkeypatch.setattr(tiny_backbone, "run", lambda *a, **k: runs.append(1) or real(*a, **k))

    def write(draft_tokens: int) -> tuple[list[str], int]:
        runs.clear()
        config = GenerationConfig(max_new_tokens=24, draft_tokens=draft_tokens, **settings)
        return greedy_batch(tiny_backbone, ids, prefix, task.model.row_inputs, config, slots=slots), len(runs)

    plain, plain_runs = write(0)
    drafted, drafted_runs = write(4)
    assert drafted == plain
    assert any(plain)
    if not settings:  # the repetition settings keep the tiny model from repeating itself: few drafts hold
        return
    assert drafted_runs < plain_runs  # drafted tokens were kept: fewer passes wrote the same text


def test_draft_tokens_is_bounded():
    with pytest.raises(DataError, match=r"draft_tokens \(--draft-tokens\) is 9: give a whole number from 0 to 8"):
        GenerationConfig(draft_tokens=9)
