"""Optimizers over programs (issue 15, items 2-3): bootstrap, random search, mipro on a fake LM rigged so
that demos (and an instruction) help; limits; the input never changes; the CLI."""

import json

import pytest
from test_cli import assert_user_error, last_json, run_main  # noqa: F401 - run_main is a fixture

from prompttune.core.errors import DataError
from prompttune.programs import FakeLM, Predict, Prompt, SearchConfig, bootstrap, load_program, mipro, random_search
from prompttune.programs.metrics import make_metric
from prompttune.programs.search import MeteredLM, labeled_demos

SIG = "text -> label: one of positive, negative"
WORDS = (("good", "positive"), ("bad", "negative"))
TRAIN = [{"text": f"{w} {i}", "label": lab} for i in range(10) for w, lab in WORDS]
VAL = [{"text": f"{w} v{i}", "label": lab} for i in range(6) for w, lab in WORDS]
ACC = make_metric("accuracy", ["label"])


def keyword(prompt: Prompt) -> str:
    return "positive" if "good" in prompt.user else "negative"


def demo_hungry(prompt: Prompt) -> str:
    """Right only with at least two demos; without, it says 'negative' to everything (accuracy 0.5)."""
    return keyword(prompt) if len(prompt.demos) >= 2 else "negative"


def test_bootstrap_keeps_only_passing_traces_and_beats_the_program_as_given():
    program, _ = load_program(SIG)
    before = json.dumps(program.to_dict())
    result = bootstrap(program, TRAIN, VAL, ACC, FakeLM(demo_hungry), SearchConfig(max_demos=3))
    assert json.dumps(program.to_dict()) == before  # the input program is untouched
    assert result.baseline_val_score == 0.5 and result.best_val_score == 1.0
    demos = result.program.steps[0].demos
    # zero-shot, the teacher got only the negative rows right: only those became demos, with its own outputs
    assert len(demos) == 3 and all(d["label"] == "negative" and d["text"].startswith("bad") for d in demos)
    assert result.candidates_evaluated == 2 and result.stopped is None


def test_random_search_is_seeded_and_picks_the_best_candidate():
    def needs_both(prompt: Prompt) -> str:  # right only when the demos show both labels
        shown = {a for _, a in prompt.demos}
        return keyword(prompt) if len(shown) == 2 else "positive"

    program, _ = load_program(SIG)
    before = json.dumps(program.to_dict())
    config = SearchConfig(max_candidates=5, max_labeled_demos=4, seed=3, formats=False)
    first = random_search(program, TRAIN, VAL, ACC, FakeLM(needs_both), config)
    again = random_search(program, TRAIN, VAL, ACC, FakeLM(needs_both), config)
    assert json.dumps(program.to_dict()) == before
    assert first.history == again.history and first.model_calls == again.model_calls
    assert first.candidates_evaluated == 5 and [h["kind"] for h in first.history[:2]] == ["as-given", "labeled"]
    assert first.best_val_score == max(h["val_score"] for h in first.history) == 1.0
    assert first.baseline_val_score == 0.5
    shown = {d["label"] for d in first.program.steps[0].demos}
    assert shown == {"positive", "negative"}


def test_mipro_proposes_instructions_from_the_data_and_keeps_the_one_that_scores():
    summaries = []

    def respond(prompt: Prompt) -> str:
        if prompt.answer == "instruction:":  # the proposer
            summaries.append(prompt.user)
            return "Say whether the text is good or bad." if "Mention" in prompt.user else "Label it."
        return keyword(prompt) if "good or bad" in prompt.system else "negative"

    program, _ = load_program(SIG)
    config = SearchConfig(max_candidates=12, num_instructions=6, minibatch_size=4, seed=1, formats=False)
    result = mipro(program, TRAIN, VAL, ACC, FakeLM(respond), config)
    assert program.steps[0].instruction == ""
    assert result.best_val_score == 1.0 and result.baseline_val_score == 0.5
    assert result.program.steps[0].instruction == "Say whether the text is good or bad."
    # the proposer saw a summary computed from the rows: label counts and real examples
    assert "positive (10)" in summaries[0] and "negative (10)" in summaries[0]
    assert "Example: text: " in summaries[0]
    full = [h for h in result.history if h["kind"].endswith("(full)")]
    assert full and all("rows" not in h for h in full)
    assert any(h.get("rows") == 4 for h in result.history)


def test_every_limit_stops_the_search_and_says_which():
    program, _ = load_program(SIG)
    lm = FakeLM(demo_hungry)
    result = random_search(program, TRAIN, VAL, ACC, lm, SearchConfig(max_candidates=50, max_model_calls=40))
    assert result.stopped == "max_model_calls (40)" and result.model_calls == 40 == lm.calls
    assert result.candidates_evaluated >= 1
    few = random_search(program, TRAIN, VAL, ACC, FakeLM(demo_hungry), SearchConfig(max_candidates=2))
    assert few.candidates_evaluated == 2 and few.stopped is None
    with pytest.raises(DataError, match="before any candidate"):
        random_search(program, TRAIN, VAL, ACC, FakeLM(demo_hungry), SearchConfig(max_model_calls=3))
    with pytest.raises(DataError, match=r"max_candidates \(--max-candidates\) is 0"):
        SearchConfig(max_candidates=0)
    with pytest.raises(DataError, match="max_seconds"):
        SearchConfig(max_seconds=float("nan"))


def test_the_metered_lm_refuses_past_the_time_limit():
    lm = MeteredLM(FakeLM(keyword), SearchConfig(max_seconds=1e-9))
    from prompttune.programs.search import BudgetExhausted

    with pytest.raises(BudgetExhausted, match="max_seconds"):
        lm.complete(Prompt("", (), "text: good"), 4)


def test_labeled_demos_and_metrics():
    program, _ = load_program(SIG)
    assert labeled_demos(program, TRAIN, 2)["step1"] == [TRAIN[0], TRAIN[1]]
    assert make_metric("em", ["a"])({"a": ["The Cat", "dog"]}, {"a": "cat"}) == 1.0
    assert make_metric("f1", ["a"])({"a": "the black cat"}, {"a": "black dog"}) == pytest.approx(0.5)
    with pytest.raises(DataError, match="MODULE:FN"):
        make_metric("nonsense", ["a"])


def test_a_program_class_is_optimized_per_predictor():
    class Classify(Predict):
        pass

    step = Classify(SIG)
    result = bootstrap(step, TRAIN, VAL, ACC, FakeLM(demo_hungry), SearchConfig(max_demos=2))
    assert result.best_val_score == 1.0 and step.demos == [] and len(result.program.demos) == 2


# --- the command line -----------------------------------------------------------------------------
def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_optimize_and_run_through_the_cli(tmp_path, long_model_dir, run_main):  # noqa: F811
    train = write(tmp_path / "train.jsonl", TRAIN[:8])
    val = write(tmp_path / "val.jsonl", VAL[:6])
    out = tmp_path / "opt"
    common = ["--train", train, "--val", val, "--out", out, "--model", long_model_dir]
    result = run_main("optimize", "text -> label", *common, "--optimizer", "random-search", "--max-candidates", "3",
                      "--max-demos", "2", "--json")  # fmt: skip
    assert result.code == 0, result.err
    assert "candidate 2 (" in result.err  # progress: candidates tried and the best so far
    summary = last_json(result.out)
    for key in ("best_val_score", "candidates_evaluated", "model_calls", "seconds", "baseline_val_score"):
        assert key in summary
    assert summary["candidates_evaluated"] == 3 and summary["model_calls"] > 0
    saved = json.loads((out / "program.json").read_text())
    # 'text -> label' became a label set of the data's labels
    assert saved["program"]["steps"][0]["signature"]["outputs"][0]["options"] == ["positive", "negative"]
    assert_user_error(run_main("optimize", "text -> label", *common), "--overwrite")
    ran = run_main("run", out, val, "--model", long_model_dir, "--json")
    assert ran.code == 0, ran.err
    report = last_json(ran.out)
    assert report["rows"] == 6 and report["metric"] == "accuracy"
    assert report["score"] == pytest.approx(summary["best_val_score"])  # the saved program scores as it did


def test_optimize_flags_are_checked_before_a_model_loads(tmp_path, run_main):  # noqa: F811
    train = write(tmp_path / "train.jsonl", TRAIN[:4])
    common = ["--train", train, "--val", train, "--out", tmp_path / "o", "--model", tmp_path / "no-such-model"]
    assert_user_error(run_main("optimize", "text -> label", *common, "--metric", "nope"), "MODULE:FN")
    assert_user_error(run_main("optimize", "text -> label", *common, "--optimizer", "grid"), "--optimizer 'grid'")
    assert_user_error(run_main("optimize", "text label", *common), "not a file")
    assert_user_error(run_main("optimize", "text -> label", *common, "--max-candidates", "0"), "--max-candidates")
    assert_user_error(run_main("run", "text -> label", tmp_path / "missing.jsonl"), "missing.jsonl")
