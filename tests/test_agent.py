"""The agent runtime: a ReAct loop over a deterministic fake model, real tools, and stop strings in generation."""

from __future__ import annotations


def test_generation_stops_before_a_stop_string(tiny_backbone):
    from prompttune.api import PromptTask

    task = PromptTask.create(tiny_backbone, labels=["x"], method="zero-shot", template="Q: {{ text }}\nA: [label]")
    free = task.generate("the cat", max_new_tokens=12)
    assert len(free) > 4
    stop = free[3:5]
    cut = task.generate("the cat", max_new_tokens=12, stop=[stop, "never appears"])
    assert cut == free[: free.find(stop)]
    assert task.generate("the cat", max_new_tokens=12, stop=["never appears"]) == free
