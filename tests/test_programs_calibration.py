"""Batch calibration of a program step (programs/calibration.py): label offsets fitted on rows' inputs, saved
with the step, applied wherever the LM gives label scores; the optimizers' candidates with them."""

import json
import math

import pytest

from prompttune.core.errors import DataError
from prompttune.programs import FakeLM, Predict, Prompt, SearchConfig, load_program, mipro, random_search
from prompttune.programs.calibration import fit_offsets
from prompttune.programs.files import Pipeline
from prompttune.programs.metrics import make_metric
from prompttune.programs.modules import using
from prompttune.programs.search import score

SIG = "text -> label: one of positive, negative"
WORDS = (("good", "positive"), ("bad", "negative"))
TRAIN = [{"text": f"{w} {i}", "label": lab} for i in range(10) for w, lab in WORDS]
VAL = [{"text": f"{w} v{i}", "label": lab} for i in range(6) for w, lab in WORDS]
ACC = make_metric("accuracy", ["label"])


def biased(prompt: Prompt | None, options) -> list[float]:
    """Log-scores that know the answer (+1 for the right label) but lean to "positive" by 3: raw, every row is
    positive (accuracy 0.5); less the mean over balanced rows, the lean cancels."""
    right = "positive" if prompt is not None and "good" in prompt.user else "negative"
    return [(3.0 if o == "positive" else 0.0) + (1.0 if o == right else 0.0) for o in options]


def lm() -> FakeLM:
    return FakeLM(lambda p: "positive", scores=biased)


def test_offsets_cancel_a_prompts_lean_and_read_no_label():
    program, _ = load_program(SIG)
    model = lm()
    assert score(program, VAL, ACC, model) == 0.5
    inputs = [{"text": r["text"]} for r in TRAIN]  # no label: the fit reads the inputs only
    assert fit_offsets(program, inputs, model)
    offsets = program.steps[0].offsets
    assert set(offsets) == {"positive", "negative"} and offsets["positive"] > offsets["negative"]
    assert score(program, VAL, ACC, model) == 1.0
    # one row at a time (forward) answers as the batched path does
    with using(model):
        assert [program(text=r["text"]).label for r in VAL] == [r["label"] for r in VAL]
        names, scores = program.steps[0].option_logprobs([{"text": "good x"}])
    raw = biased(Prompt("", (), "good x"), names)
    norm = [s - math.log(sum(math.exp(x) for x in raw)) for s in raw]
    assert scores[0] == pytest.approx([n - offsets[o] for n, o in zip(norm, names, strict=True)])


def test_offsets_are_saved_and_reload_to_the_same_answers():
    program, _ = load_program(SIG)
    fit_offsets(program, TRAIN, lm())
    saved = json.loads(json.dumps(program.to_dict()))
    assert saved["steps"][0]["offsets"] == program.steps[0].offsets
    again = Pipeline.from_dict(saved, "program.json")
    assert again.steps[0].offsets == program.steps[0].offsets
    assert score(again, VAL, ACC, lm()) == 1.0


def test_no_offsets_where_the_lm_gives_no_scores():
    program, _ = load_program(SIG)
    choose_only = FakeLM(lambda p: "positive", choose=lambda p, options: "positive")
    assert not fit_offsets(program, TRAIN, choose_only)
    assert program.steps[0].offsets is None


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"offsets": {"positive": 0.1}}, "'offsets' has labels ['positive']; the step's answer takes"),
        ({"offsets": {"positive": 0.1, "negative": float("nan")}}, "must map each label to a finite number"),
        ({"offsets": [0.1, 0.2]}, "must map each label to a finite number"),
        ({"offsets": {"positive": 0.1, "negative": 0.0}, "calibrate": True}, "exclude each other"),
    ],
)
def test_bad_offsets_are_refused_with_the_reason(state, message):
    step = Predict(SIG)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        step.set_state({"instruction": "", **state})


def test_offsets_on_a_step_without_a_label_set_are_refused():
    step = Predict("question -> answer")
    with pytest.raises(DataError, match="'offsets' has labels"):
        step.set_state({"instruction": "", "offsets": {"yes": 0.0}})


def test_random_search_calibrates_its_demo_candidates_and_can_be_told_not_to():
    program, _ = load_program(SIG)
    config = SearchConfig(max_candidates=3, max_labeled_demos=2, formats=False)
    on = random_search(program, TRAIN, VAL, ACC, lm(), config)
    assert on.baseline_val_score == 0.5 and on.best_val_score == 1.0
    assert on.program.steps[0].offsets is not None
    assert [h["calibrated"]["step1"] for h in on.history] == [False, "batch", "batch"]
    off = random_search(program, TRAIN, VAL, ACC, lm(), SearchConfig(**{**config.__dict__, "batch_calibration": False}))
    assert off.best_val_score == 0.5 and off.program.steps[0].offsets is None
    assert program.steps[0].offsets is None  # the input program is untouched


def test_mipro_searches_batch_calibration_as_a_third_choice():
    program, _ = load_program(SIG)
    config = SearchConfig(max_candidates=8, max_labeled_demos=2, num_instructions=1, minibatch_size=6, formats=False)
    result = mipro(program, TRAIN, VAL, ACC, lm(), config)
    kinds = [h["kind"] for h in result.history]
    assert any(k.endswith("batch-calibrated") for k in kinds)
    assert result.best_val_score == 1.0 and result.program.steps[0].offsets is not None
    with pytest.raises(DataError, match="batch_calibration is 'yes': give true or false"):
        SearchConfig(batch_calibration="yes")


def test_a_calibrated_program_optimized_again_refits_or_drops_its_offsets():
    program, _ = load_program(SIG)
    fit_offsets(program, TRAIN, lm())
    config = SearchConfig(max_candidates=8, max_labeled_demos=2, num_instructions=1, minibatch_size=6, formats=False)
    result = mipro(program, TRAIN, VAL, ACC, lm(), config)  # contextual candidates drop the old offsets
    assert any("calibrated" in h["kind"] and not h["kind"].endswith("batch-calibrated") for h in result.history)
    off = random_search(program, TRAIN, VAL, ACC, lm(), SearchConfig(max_candidates=2, batch_calibration=False))
    assert off.history[0]["calibrated"]["step1"] == "batch"  # the program as given keeps its own
    assert off.history[1]["calibrated"]["step1"] is False  # new demos: the old offsets do not fit them
