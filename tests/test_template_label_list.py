"""The built-in classification templates list the label words only while the list is short (every row reads it)."""

from __future__ import annotations

import pytest

from prompttune.core.template import SoftSlot, Template

LISTING_CHARS = 200  # the built-ins list the labels while "a, b, c" is at most this many characters


def prefix_text(name: str, tokenizer, labels: list[str]) -> str:
    compiled = Template.from_spec(name).compile(tokenizer, labels, 5)
    return "".join(p for p in compiled.prefix if not isinstance(p, SoftSlot))


@pytest.mark.parametrize(
    "name", ["classify", "classify-late", "classify-pair", "classify-pair-late", "qa-yes-no", "qa-yes-no-late"]
)
def test_builtins_list_a_few_labels_and_not_hundreds(tiny_backbone, name):
    tok = tiny_backbone.tokenizer
    few = prefix_text(name, tok, ["negative", "positive"])
    assert "negative, positive." in few
    many = [f"word{i} other{i} third{i}" for i in range(300)]  # a listing of 7,000+ characters
    without = prefix_text(name, tok, many)
    assert "word0" not in without and "Possible" not in without
    assert "Reply with the" in without  # the instruction stays, the list goes
    bare = prefix_text(name, tok, ["x" * LISTING_CHARS])
    over = prefix_text(name, tok, ["x" * (LISTING_CHARS + 1)])
    assert "x" * LISTING_CHARS in bare and "xxxx" not in over  # the bound is on the joined list's characters
    # the prefix no longer grows with the labels: hundreds of labels cost less than two listed
    assert len(tok(without)["input_ids"]) < len(tok(few)["input_ids"])
