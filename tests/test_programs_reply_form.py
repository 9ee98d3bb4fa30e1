"""A step's reply held to its form on the in-process backbone (``programs/reply_form.py``): typed outputs that
parse whatever the model, with the other LMs' replies parsed (and retried) as before."""

from __future__ import annotations

import pytest

from prompttune.programs import BackboneLM, ChainOfThought, FakeLM, OutputParseError, Predict, Signature, using
from prompttune.programs.reply_form import reply_form


@pytest.fixture(scope="module")
def backbone(long_model_dir):
    """The tiny decoder with room for the step's system text (its tokenizer takes a token a character or two)."""
    from prompttune import Backbone

    return Backbone.load(str(long_model_dir))


TYPED = Signature.parse("question -> count: number, details: json, verdict: one of yes, no")


def test_the_form_lists_each_field_as_the_prompt_shows_it():
    step = Predict(TYPED)
    form = step.prompt({"question": "q"}).form
    assert form.splitlines() == [
        r'start: " " v0 "\ndetails: " v1 "\nverdict: " v2',
        r"v0: /-?[0-9]{1,18}(\.[0-9]{1,12})?/",
        "v1: %json { }",
        'v2: "yes" | "no"',
    ]
    assert reply_form(Signature.parse("q -> a, b").outputs) is None  # text only: nothing to hold
    assert step.prompt({"question": "q"}, answer="count: 3").form is None  # an answer already begun


@pytest.mark.parametrize("question", ["how many cats?", "is it raining", "what is 2 + 2", "name a colour"])
def test_a_random_model_writes_replies_that_parse(backbone, question):
    """Without the form the tiny random model's replies do not parse (tested below); held to it every reply does,
    on the first try."""
    step = Predict(TYPED, max_retries=0, max_tokens=60)
    with using(BackboneLM(backbone)):
        out = step(question=question)
    assert isinstance(out.count, int | float) and out.verdict in ("yes", "no")
    assert out.details is None or isinstance(out.details, dict | list | str | int | float | bool)


def test_without_the_form_the_same_replies_do_not_parse(backbone):
    from dataclasses import replace

    lm = BackboneLM(backbone)
    prompt = replace(Predict(TYPED, max_tokens=60).prompt({"question": "how many cats?"}), form=None)
    from prompttune.programs.parse import parse_reply

    with pytest.raises(OutputParseError):
        parse_reply(TYPED.outputs, lm.complete(prompt, 60))


def test_chain_of_thought_reasons_on_one_line_then_answers_in_form(backbone):
    step = ChainOfThought(Signature.parse("question -> answer: number"), max_retries=0, max_tokens=1200)
    with using(BackboneLM(backbone)):
        out = step(question="how many legs has a cat")
    assert "\n" not in out.reasoning and 0 < len(out.reasoning) <= 1000 and isinstance(out.answer, int | float)


def test_other_lms_get_the_prompt_without_being_held():
    seen = []
    lm = FakeLM(lambda p: seen.append(p.form) or "count: many")
    with using(lm), pytest.raises(OutputParseError, match="a number"):
        Predict(Signature.parse("question -> count: number"), max_retries=0)(question="q")
    assert seen and seen[0].startswith("start:")  # the form travels with the prompt; FakeLM ignores it
