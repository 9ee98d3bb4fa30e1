"""mipro's last stage (candidates.py): a candidate never runs twice on a row, the race halves the best
minibatch candidates rung by rung up to the whole validation set, and the trials stop in time to leave
the race its model calls and seconds (before, a time limit reached in the trials left no candidate scored
on the whole set, so the program as given was kept)."""

import dataclasses
import types
import zlib

from prompttune.programs import FakeLM, Prompt, SearchConfig, load_program, mipro
from prompttune.programs import candidates as candidates_module
from prompttune.programs import search as search_module
from prompttune.programs.candidates import Search, race, race_cost
from prompttune.programs.metrics import make_metric
from prompttune.programs.search import with_demos

SIG = "text -> label: one of positive, negative"
ACC = make_metric("accuracy", ["label"])
TRAIN = [
    {"text": f"{w} {i}", "label": lab} for i in range(10) for w, lab in (("good", "positive"), ("bad", "negative"))
]
VAL = [{"text": f"{w} v{i}", "label": lab} for i in range(16) for w, lab in (("good", "positive"), ("bad", "negative"))]


def right(prompt: Prompt) -> str:
    return "positive" if "good" in prompt.user else "negative"


def wrong(prompt: Prompt) -> str:
    return "negative" if "good" in prompt.user else "positive"


def by_demos(prompt: Prompt, options) -> str:
    """Right on a row with probability (demos + 1) / 7, decided by a hash of the row: more demos, better."""
    luck = zlib.crc32(prompt.user.encode()) % 7
    return right(prompt) if luck <= len(prompt.demos) else wrong(prompt)


def test_a_candidate_is_scored_once_per_row():
    program, _ = load_program(SIG)
    lm = FakeLM(lambda p: "x", lambda p, o: right(p))
    search = Search(program, VAL, ACC, lm, SearchConfig(), None)
    assert search.evaluate("mini", program, 4) == 1.0 and lm.calls == 4
    assert search.evaluate("full", program.copy()) == 1.0 and lm.calls == len(VAL)  # only the 28 rows it lacked
    assert [h["model_calls"] for h in search.history] == [4, len(VAL) - 4]
    assert search.history[0]["rows"] == 4 and "rows" not in search.history[1]
    assert len(search.scored) == 1 and search.best[0] == 1.0  # one candidate, however often it is re-scored


def test_the_race_halves_the_field_rung_by_rung_and_ends_on_the_whole_set():
    program, _ = load_program(SIG)
    lm = FakeLM(lambda p: "x", by_demos)
    search = Search(program, VAL, ACC, lm, SearchConfig(), None)
    entrants = [with_demos(program, {"step1": TRAIN[:k]}) for k in range(6)]
    trials = [(search.evaluate(f"{k} demos", c, 4), c, f"{k} demos") for k, c in enumerate(entrants)]
    calls = lm.calls
    race(search, trials, start=4, top=6)
    rungs = [h.get("rows", len(VAL)) for h in search.history[6:]]
    assert rungs == [8] * 6 + [16] * 3 + [32] * 2  # 32 rows: 6 on 8, the better 3 on 16, the better 2 on all
    assert lm.calls - calls == race_cost(len(VAL), 4, 6) == 6 * 4 + 3 * 8 + 2 * 16
    assert search.history[-1]["kind"].endswith("(full)")
    assert len(search.best[1].steps[0].demos) == 5  # the most demos: the best on the whole set


def test_mipro_stops_its_trials_in_time_for_the_race(monkeypatch):
    clock = [0.0]  # every model call takes one second of a fake clock
    fake_time = types.SimpleNamespace(monotonic=lambda: clock[0])
    monkeypatch.setattr(search_module, "time", fake_time)
    monkeypatch.setattr(candidates_module, "time", fake_time)

    def choose(prompt: Prompt, options) -> str:
        clock[0] += 1.0
        return right(prompt) if len(prompt.demos) >= 2 else "negative"

    program, _ = load_program(SIG)
    config = SearchConfig(max_candidates=60, minibatch_size=4, num_instructions=1, formats=False, max_seconds=200)
    result = mipro(program, TRAIN, VAL, ACC, FakeLM(lambda p: "instruction: Label it.", choose), config)
    assert result.stopped is None  # the race finished inside the limit: nothing was cut short
    assert result.best_val_score == 1.0 and len(result.program.steps[0].demos) >= 2
    trials = [h for h in result.history if h["kind"].startswith("instruction") and "(" not in h["kind"]]
    assert 1 <= len(trials) < 60 and result.seconds <= 200
    clock[0] = 0.0
    lm = FakeLM(lambda p: "instruction: Label it.", choose)
    free = mipro(program, TRAIN, VAL, ACC, lm, dataclasses.replace(config, max_seconds=1e5))
    more = [h for h in free.history if h["kind"].startswith("instruction") and "(" not in h["kind"]]
    assert len(more) > len(trials)  # it was the time kept for the race that ended the trials


def test_the_race_takes_fewer_entrants_when_the_limits_are_tight():
    program, _ = load_program(SIG)
    lm = FakeLM(lambda p: "x", lambda p, o: right(p))
    roomy = Search(program, VAL, ACC, lm, SearchConfig(max_model_calls=1000), None)
    assert roomy.race_entrants(4) == 8
    tight = Search(program, VAL, ACC, lm, SearchConfig(max_model_calls=200), None)
    top = tight.race_entrants(4)
    assert 2 < top < 8 and race_cost(len(VAL), 4, top) <= 0.4 * 200 < race_cost(len(VAL), 4, top + 1)
    assert Search(program, VAL, ACC, lm, SearchConfig(max_model_calls=50), None).race_entrants(4) == 2
