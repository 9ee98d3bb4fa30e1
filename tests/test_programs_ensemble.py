"""Ensembles (programs/ensemble.py): members' label scores averaged (or answers voted where the LM cannot
score), saved and loaded like any program, built by a search's ``ensemble`` setting from its best candidates
and kept only where it scores above the best alone, the members' scores read back from the journal."""

import json

import pytest

from prompttune.core.errors import DataError
from prompttune.programs import FakeLM, Prompt, SearchConfig, load_program, save_program, using
from prompttune.programs.candidates import Search, try_ensemble
from prompttune.programs.ensemble import Ensemble
from prompttune.programs.export import as_template
from prompttune.programs.journal import JournaledLM
from prompttune.programs.metrics import make_metric
from prompttune.programs.run import optimize_files, run_file
from prompttune.programs.search import MeteredLM, with_demos

SIG = "text -> label: one of positive, negative"
ACC = make_metric("accuracy", ["label"])
# "a" rows and "b" rows; each member is sure where it is right and unsure where it is wrong
VAL = [{"text": f"{kind} {w} {i}", "label": lab} for i in range(4) for kind in "ab"
       for w, lab in (("good", "positive"), ("bad", "negative"))]  # fmt: skip


def member(instruction: str):
    program, _ = load_program(SIG)
    return with_demos(program, {}, {"step1": instruction})


def sure_on(prompt: Prompt, options) -> list[float]:
    """The member whose instruction is "a" knows "a" rows (log-prob -0.01 on the right label) and is slightly
    wrong on "b" rows (-0.6 / -0.8); the "b" member the other way round; "c" is always slightly wrong."""
    right = "positive" if "good" in prompt.user else "negative"
    instruction = prompt.system.split("\n", 1)[0]
    knows = instruction in ("a", "b") and f": {instruction} " in prompt.user
    high, low = (-0.01, -5.0) if knows else (-0.8, -0.6)
    return [high if o == right else low for o in options]


def test_mean_of_scores_beats_each_member_and_vote_cannot_where_the_lm_only_chooses():
    a, b = member("a"), member("b")
    scoring = FakeLM(lambda p: "x", scores=sure_on)
    with using(scoring):
        assert [p.label for p in a.batch(VAL)] == [p.label for p in a.batch(VAL)]  # deterministic
        alone = [sum(p.label == r["label"] for p, r in zip(m.batch(VAL), VAL, strict=True)) for m in (a, b)]
        both = Ensemble([a, b])
        assert both.combine() == "mean"
        assert alone == [8, 8] and [p.label for p in both.batch(VAL)] == [r["label"] for r in VAL]
        assert both(text=VAL[0]["text"]).label == VAL[0]["label"]
    choosing = FakeLM(lambda p: "x", choose=lambda p, o: o[max(range(len(o)), key=sure_on(p, o).__getitem__)])
    with using(choosing):  # no scores: a vote, and a tie of two goes to the first member
        assert both.combine() == "vote"
        assert [p.label for p in both.batch(VAL)] == [p.label for p in a.batch(VAL)]
        twin = with_demos(a, {"step1": VAL[:1]})  # a's answers, another candidate
        three = Ensemble([member("c"), a, twin])  # listed first, c is outvoted where a and its twin agree
        assert [p.label for p in three.batch(VAL)] == [p.label for p in a.batch(VAL)]


def test_an_ensemble_saves_loads_and_answers_the_same(tmp_path):
    both = Ensemble([with_demos(member("a"), {"step1": VAL[:2]}), member("b")])
    save_program(both, tmp_path / "ens", best_val_score=1.0)
    again, record = load_program(tmp_path / "ens")
    assert isinstance(again, Ensemble) and record["best_val_score"] == 1.0
    assert again.to_dict() == both.to_dict() and len(again.members[0].steps[0].demos) == 2
    lm = FakeLM(lambda p: "x", scores=sure_on)
    with using(lm):
        assert [p.label for p in again.batch(VAL)] == [p.label for p in both.batch(VAL)]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in VAL))
    report = run_file(tmp_path / "ens", rows, lm)  # what `prompttune run` does
    assert report["score"] == 1.0 and report["outputs"][0] == {"label": VAL[0]["label"]}


def test_bad_ensembles_are_refused_with_what_to_do(tmp_path):
    with pytest.raises(DataError, match="2 to 8 members"):
        Ensemble([member("a")])
    other, _ = load_program("text -> sentiment: one of positive, negative")
    with pytest.raises(DataError, match="members must match"):
        Ensemble([member("a"), other])
    one = {"format": "prompttune-program", "version": 1, "program": {"ensemble": [member("a").to_dict()]}}
    (tmp_path / "one.json").write_text(json.dumps(one))
    with pytest.raises(DataError, match=r"one.json: 'ensemble' must list 2 to 8"):
        load_program(tmp_path / "one.json")
    extra = {"ensemble": [member("a").to_dict()] * 2, "steps": []}
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    with pytest.raises(DataError, match=r"holds only 'ensemble'.*\['steps'\]"):
        load_program(tmp_path / "extra.json")
    with pytest.raises(DataError, match="runs as a program"):
        as_template(Ensemble([member("a"), member("b")]))
    save_program(Ensemble([member("a"), member("b")]), tmp_path / "ens")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in VAL))
    with pytest.raises(DataError, match="an ensemble; optimize one program"):
        optimize_files(str(tmp_path / "ens"), rows, rows, "accuracy", "bootstrap", tmp_path / "o", FakeLM(str))
    with pytest.raises(DataError, match="--ensemble"):
        SearchConfig(ensemble=9)


@pytest.mark.parametrize("journaled", [True, False])
def test_a_search_keeps_the_ensemble_only_where_it_beats_the_best_at_no_new_model_call(tmp_path, journaled):
    inner = FakeLM(lambda p: "x", scores=sure_on)
    lm = JournaledLM(inner, tmp_path / "search.jsonl", "s") if journaled else inner
    program = member("")
    search = Search(program, VAL, ACC, lm, SearchConfig(ensemble=2), None)
    assert search.evaluate("a", member("a")) == search.evaluate("b", member("b")) == 0.5
    calls = inner.calls
    try_ensemble(search, 2)
    assert inner.calls == calls  # both members' scores were kept from when they were scored alone
    assert search.history[-1]["kind"] == "ensemble of 2" and search.history[-1]["val_score"] == 1.0
    assert isinstance(search.best[1], Ensemble) and search.best[0] == 1.0
    # no gain: the best alone is kept
    search = Search(program, VAL, ACC, MeteredLM(inner, SearchConfig()), SearchConfig(ensemble=3), None)
    search.evaluate("a", member("a"))
    search.evaluate("c", member("c"))
    try_ensemble(search, 3)
    assert search.history[-1]["kind"] == "ensemble of 2" and not isinstance(search.best[1], Ensemble)
    # a candidate scored on fewer rows than the race's first rung (twice the minibatch) takes no part
    search = Search(program, VAL, ACC, inner, SearchConfig(ensemble=2, minibatch_size=4), None)
    search.evaluate("a", member("a"))
    search.evaluate("b", member("b"), 7)
    before = len(search.history)
    try_ensemble(search, 2)
    assert len(search.history) == before


def test_top_selection_takes_the_n_best_where_greedy_stops_when_none_lifts_it():
    inner = FakeLM(lambda p: "x", scores=sure_on)
    searches = {}
    for select in ("greedy", "top"):
        search = Search(member(""), VAL, ACC, inner, SearchConfig(ensemble=3, ensemble_select=select), None)
        for name in "abc":
            search.evaluate(name, member(name))
        try_ensemble(search, 3)
        searches[select] = search
    greedy, top = searches["greedy"], searches["top"]
    assert len(greedy.best[1].members) == 2 and greedy.best[0] == 1.0  # c lifts nothing once a and b are in
    assert [h["kind"] for h in top.history[-1:]] == ["ensemble of the 3 best"]
    assert len(top.best[1].members) == 3 and top.best[0] == 1.0  # one ensemble tried, kept: it beats a alone
    with pytest.raises(DataError, match="--ensemble-select"):
        SearchConfig(ensemble_select="best")


def test_the_ensemble_reserve_is_the_pools_unscored_rows():
    inner = FakeLM(lambda p: "x", scores=sure_on)
    config = SearchConfig(ensemble=3, minibatch_size=4)  # pool members have at least 8 of the 16 rows
    assert Search(member(""), VAL, ACC, inner, config, None).ensemble_reserve() == 5 * (len(VAL) - 8)
    assert Search(member(""), VAL, ACC, inner, SearchConfig(), None).ensemble_reserve() == 0


def test_the_metered_lm_asks_a_question_once_and_counts_it_once():
    inner = FakeLM(lambda p: "x", scores=sure_on)
    metered = MeteredLM(inner, SearchConfig())
    with using(metered):
        first = [p.label for p in member("a").batch(VAL)]
        assert metered.calls == inner.calls == len(VAL)
        assert [p.label for p in member("a").batch(VAL[:3] + VAL)] == first[:3] + first
        assert metered.calls == inner.calls == len(VAL)
        member("b").batch(VAL[:2])
    assert metered.calls == inner.calls == len(VAL) + 2
