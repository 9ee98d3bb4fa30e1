"""A program step's layout and field names (issue 15): the plain layout, prefixes, and the optimizers' search
over them (programs/formats.py), on a fake LM rigged so that one output name works, and on a tiny model."""

import json
from dataclasses import replace

import pytest
import torch
from test_cli import assert_user_error, run_main  # noqa: F401 - run_main is a fixture

from prompttune.core.errors import DataError, PromptTuneError
from prompttune.core.template import Template
from prompttune.programs import BackboneLM, FakeLM, Predict, Prompt, SearchConfig, load_program, mipro, random_search
from prompttune.programs.export import as_template
from prompttune.programs.files import Pipeline, save_program
from prompttune.programs.formats import OUTPUT_NAMES, format_candidates, parse_prefixes
from prompttune.programs.metrics import make_metric
from prompttune.prompt_task import PromptTask

SIG = "text -> label: one of positive, negative"
WORDS = (("good", "positive"), ("bad", "negative"))
TRAIN = [{"text": f"{w} {i}", "label": lab} for i in range(10) for w, lab in WORDS]
VAL = [{"text": f"{w} v{i}", "label": lab} for i in range(6) for w, lab in WORDS]
ACC = make_metric("accuracy", ["label"])


def plain_step(**state) -> Predict:
    step = Predict(SIG)
    demos = [{"text": "great fun", "label": "positive"}]
    step.set_state({"instruction": "", "demos": demos, "layout": "plain"} | state)
    return step


def test_the_plain_layout_shows_each_field_under_its_prefix_and_saves_with_the_program(tmp_path):
    step = plain_step(prefixes={"text": "Movie review", "label": "Sentiment"})
    prompt = step.prompt({"text": "boring"})
    assert prompt.plain and prompt.answer == "Sentiment:"
    assert prompt.text() == "Movie review: great fun\nSentiment: positive\n\nMovie review: boring\nSentiment:"
    assert Predict(SIG).prompt({"text": "x"}).system.startswith("Given the fields text")  # chat stays the default
    plain_step(instruction="Is it positive?").prompt({"text": "x"}).text().startswith("Is it positive?\n\nText: ")
    save_program(Pipeline([("classify", step)]), tmp_path / "p")
    again, _ = load_program(str(tmp_path / "p"))
    assert again.steps[0].prompt({"text": "boring"}) == prompt
    saved = json.loads((tmp_path / "p" / "program.json").read_text())
    first = saved["program"]["steps"][0]
    assert first["layout"] == "plain" and first["prefixes"]["label"] == "Sentiment"
    with pytest.raises(DataError, match="layout 'html'"):
        step.set_state({"layout": "html"})
    with pytest.raises(DataError, match="without ':'"):
        step.set_state({"prefixes": {"label": "Label:"}})
    with pytest.raises(DataError, match="not a field"):
        step.set_state({"prefixes": {"review": "Review"}})


def test_a_reply_is_read_under_the_name_the_prompt_showed():
    step = plain_step(prefixes={"label": "Sentiment"})
    lm = FakeLM(lambda prompt: "Sentiment: negative")  # generation path: the fake LM cannot choose
    from prompttune.programs import using

    with using(lm):
        assert step(text="awful").label == "negative"


def test_the_backbone_lm_scores_a_plain_prompt_as_its_whole_text(tiny_backbone):
    bb = tiny_backbone
    lm = BackboneLM(bb)
    step = plain_step(prefixes={"label": "Sentiment"})
    prompt = step.prompt({"text": "a terrible film"})
    options = ["positive", "not_entailment"]  # a one-token and (on this tokenizer) a longer option
    assert len(bb.tokenize(" not_entailment")) > 1
    scores = lm.option_scores(prompt, options)
    for option, got in zip(options, scores, strict=True):
        ids, opt = bb.tokenize(prompt.text()), bb.tokenize(" " + option)
        with torch.no_grad():
            logits = bb.model(torch.tensor([bb.bos_ids + ids + opt])).logits[0].float()
        logp = torch.log_softmax(logits[-len(opt) - 1 : -1], -1)
        assert got == pytest.approx(float(logp[torch.arange(len(opt)), torch.tensor(opt)].sum()), abs=1e-3)


def test_a_plain_program_as_a_template_is_the_prompt_it_shows(tiny_backbone):
    step = plain_step(prefixes={"text": "Review", "label": "Sentiment"}, instruction="Judge the review.")
    template = as_template(Pipeline([("classify", step)]))
    assert template.chat is False
    row = {"text": "I loved it"}
    task = PromptTask.create(tiny_backbone, ["positive", "negative"], "zero-shot", {}, template)
    compiled = task.model.compiled
    shown = Template.from_spec(BackboneLM(tiny_backbone)._spec(step.prompt(row))).hard()
    shown = shown.compile(tiny_backbone.tokenizer, [], 1)
    want = shown.prefix_text + shown.render_row({"row": step.user_text(row)})
    assert compiled.prefix_text + compiled.render_row(row) == want == step.prompt(row).text()


def named_right(name: str):
    """Right only when the prompt is plain and asks for ``name``; otherwise 'negative' for every row."""

    def respond(prompt: Prompt) -> str:
        good = prompt.plain and prompt.answer == f"{name}:" and "good" in prompt.user.splitlines()[-1]
        return "positive" if good else "negative"

    return respond


def test_random_search_screens_formats_and_keeps_the_output_name_that_works():
    program, _ = load_program(SIG)
    config = SearchConfig(max_candidates=30, max_labeled_demos=2, minibatch_size=6, seed=0)
    result = random_search(program, TRAIN, VAL, ACC, FakeLM(named_right("Sentiment")), config)
    assert result.baseline_val_score == 0.5 and result.best_val_score == 1.0
    best = result.program.steps[0]
    assert best.layout == "plain" and best.prefixes["label"] == "Sentiment"
    kinds = [h["kind"] for h in result.history]
    assert "format chat" in kinds and "format plain (label=Sentiment)" in kinds
    assert sum(k.startswith("format") for k in kinds) == 2 + len(OUTPUT_NAMES)  # own, "Label", the list
    small = random_search(program, TRAIN, VAL, ACC, FakeLM(named_right("Sentiment")), replace(config, max_candidates=6))
    kinds = [h["kind"] for h in small.history]
    # half the 6 candidates screen formats (the program as given, which is its own format, and 2 more); the rest
    # are demo sets, which a small budget would otherwise never reach
    assert kinds[:4] == ["as-given", "format chat", "format plain (label=Label)", "format plain (label=Answer)"]
    assert len(kinds) == 7 and all(k.split()[0] in ("labeled", "bootstrap") for k in kinds[4:])
    off = random_search(program, TRAIN, VAL, ACC, FakeLM(named_right("Sentiment")), SearchConfig(formats=False))
    assert off.best_val_score == 0.5 and not any(h["kind"].startswith("format") for h in off.history)


def test_mipro_tries_a_name_the_user_gives():
    program, _ = load_program(SIG)
    given = parse_prefixes(["label=Mood", "text=Review"])
    assert given == {"label": ["Mood"], "text": ["Review"]}
    names = [c["prefixes"].get("label") for c in format_candidates(program.steps[0], given)]
    assert names[:3] == [None, "Mood", "Label"]
    config = SearchConfig(max_candidates=24, num_instructions=1, minibatch_size=6, max_labeled_demos=2)
    result = mipro(program, TRAIN, VAL, ACC, FakeLM(named_right("Mood")), config, prefixes=given)
    best = result.program.steps[0]
    assert result.best_val_score == 1.0 and best.prefixes == {"label": "Mood", "text": "Review"}


@pytest.mark.parametrize(
    "spec, says",
    [("label", "FIELD=NAME"), ("label=A: b", "without ':'"), ("=x", "FIELD=NAME")],
)
def test_bad_prefixes_say_what_to_write(spec, says):
    with pytest.raises(DataError, match=says):
        parse_prefixes([spec])


def test_the_cli_refuses_a_prefix_for_a_field_the_program_lacks(run_main, tmp_path):  # noqa: F811
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in TRAIN))
    args = ["optimize", SIG, "--train", str(rows), "--val", str(rows), "--out", str(tmp_path / "o")]
    assert_user_error(run_main(*args, "--prefix", "review=Review"), "no field 'review'")
    assert_user_error(run_main(*args, "--optimizer", "bootstrap", "--prefix", "label=Mood"), "--prefix")
    assert not (tmp_path / "o").exists()


class Killed(Exception):
    """Stands for the process being killed mid-search."""


def test_a_search_killed_midway_resumes_from_its_journal_with_the_same_history(tmp_path):
    from prompttune.programs.run import optimize_files

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in TRAIN))
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in VAL))
    config = SearchConfig(max_candidates=20, num_instructions=2, minibatch_size=6, max_labeled_demos=2)
    respond = named_right("Sentiment")

    def instruction_or(prompt: Prompt) -> str:
        return "Say if it is good." if prompt.answer == "instruction:" else respond(prompt)

    def run(out, lm):
        return optimize_files(SIG, rows, val, "accuracy", "mipro", tmp_path / out, lm, config)

    whole_lm = FakeLM(instruction_or)
    whole = run("whole", whole_lm)
    calls = {"n": 0}

    def dies_after_40(prompt: Prompt) -> str:
        calls["n"] += 1
        if calls["n"] > 40:
            raise Killed
        return instruction_or(prompt)

    with pytest.raises(Killed):
        run("killed", FakeLM(dies_after_40))
    assert not (tmp_path / "killed" / "program.json").exists()
    fresh = FakeLM(instruction_or)
    resumed = run("killed", fresh)
    assert resumed["history"] == whole["history"] and resumed["model_calls"] == whole["model_calls"]
    # the 40 answers given before the kill are read back, not asked again (a question asked twice is asked once)
    assert fresh.calls == whole_lm.calls - 40 and resumed["calls_answered_from_journal"] >= 40
    assert resumed["best_val_score"] == whole["best_val_score"] == 1.0
    with pytest.raises(PromptTuneError, match="holds a saved program"):  # done: a rerun needs --overwrite
        run("killed", FakeLM(instruction_or))
    other = SearchConfig(max_candidates=21, num_instructions=2, minibatch_size=6, max_labeled_demos=2)
    (tmp_path / "killed" / "program.json").unlink()
    with pytest.raises(DataError, match="a different search"):
        optimize_files(SIG, rows, val, "accuracy", "mipro", tmp_path / "killed", FakeLM(instruction_or), other)


def test_a_calibrated_step_chooses_relative_to_a_content_free_row(tiny_backbone):
    seen = []
    step = plain_step(calibrate=True)
    lm = FakeLM(lambda p: "", choose=lambda prompt, options: options[0])
    lm.choose = lambda prompt, options, baseline=None: seen.append(baseline) or options[0]
    lm.can_choose = True
    from prompttune.programs import using

    with using(lm):
        step(text="fine")
    assert seen[0] == step.prompt({"text": "N/A"})  # the baseline: the same prompt, the row "N/A"
    assert plain_step().content_free() is None
    bb_lm = BackboneLM(tiny_backbone)
    prompt, base = step.prompt({"text": "a fine film"}), step.content_free()
    options = ["positive", "negative"]
    raw, cf = bb_lm.option_scores(prompt, options), bb_lm.option_scores(base, options)
    norm = [torch.tensor(s).log_softmax(0) for s in (raw, cf)]
    want = options[int((norm[0] - norm[1]).argmax())]
    assert bb_lm.choose(prompt, options, base) == want
    saved = Pipeline([("s", step)]).to_dict()["steps"][0]
    assert saved["calibrate"] is True
    with pytest.raises(DataError, match="calibrate"):
        step.set_state({"calibrate": "yes"})


def test_the_formats_tried_keep_the_input_names_a_program_was_written_with():
    program, _ = load_program(SIG)
    step = program.steps[0]
    step.layout, step.prefixes = "plain", {"text": "Movie review", "label": "Sentiment"}
    candidates = format_candidates(step)
    assert candidates[0] == {"layout": "plain", "prefixes": {"text": "Movie review", "label": "Sentiment"}}
    assert len(candidates) > 3 and all(c["prefixes"]["text"] == "Movie review" for c in candidates)
    assert {c["prefixes"]["label"] for c in candidates} >= {"Sentiment", "Label", *OUTPUT_NAMES}
    given = format_candidates(step, {"text": ["Film review"]})  # a name the user gives wins over the program's
    assert all(c["prefixes"]["text"] == "Film review" for c in given[1:])
