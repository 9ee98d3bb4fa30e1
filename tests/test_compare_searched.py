"""`prompttune compare`'s searched arms on the tiny model and a made-up task: ``optimized`` (an optimizer of
programs picks instruction and demos), ``pez`` (projected gradients pick the soft slots' tokens) and ``gcg`` (swaps
ranked by the gradient) each give a cell whose accuracy is the found template's on the test rows, stand in the
report's table and accuracy-vs-rows curve with their cost, are reused on a rerun, and refuse bad settings naming the
option; the program a search finds is written as a template whose text is exactly the prompt the program shows the
model."""

from __future__ import annotations

import json
import random

import pytest
from conftest import NEG, POS, write_jsonl
from typer.testing import CliRunner

from prompttune import cli
from prompttune.compare import run_compare
from prompttune.compare.arms import parse_options, resolve
from prompttune.compare.split import make_split
from prompttune.core.backbone import Backbone
from prompttune.core.errors import DataError, PromptTuneError
from prompttune.core.template import Template
from prompttune.programs import ChainOfThought, Predict
from prompttune.programs.export import as_template
from prompttune.programs.files import Pipeline
from prompttune.programs.lm import BackboneLM
from prompttune.prompt_task import PromptTask

SMALL = [  # the tiny model holds 256 positions: one demo beside the program's system text
    "optimized.max_candidates=3",
    "optimized.max_demos=1",
    "optimized.max_labeled_demos=1",
    "pez.max_steps=4",
    "pez.tokens=2",
    "pez.eval_every=2",
    "gcg.max_steps=2",
    "gcg.tokens=2",
    "gcg.top_k=4",
    "gcg.candidates=2",
    "gcg.eval_every=1",
]


@pytest.fixture
def task_file(tmp_path):
    rows = [{"text": t, "label": "positive"} for t in POS] + [{"text": t, "label": "negative"} for t in NEG]
    rows = rows * 4
    random.Random(0).shuffle(rows)
    return write_jsonl(tmp_path / "task.jsonl", rows)  # 40 rows: 29 train pool, 3 validation, 8 test


def compare(task_file, out, tiny_model_dir, **kw):
    settings = {"max_steps": 2, "batch_size": 4, "isolate": False, "method_options": SMALL, **kw}
    return run_compare(task_file, out, model=str(tiny_model_dir), **settings)


def test_both_arms_score_their_found_template_in_the_table_and_curves_and_resume(task_file, tmp_path, tiny_model_dir):
    out = tmp_path / "cmp"
    kw = {"methods": "zero-shot,optimized,pez,gcg", "train_sizes": "8,16"}
    first = compare(task_file, out, tiny_model_dir, **kw)
    assert (first["ran"], first["reused"]) == (7, 0)
    rows = {r["method"]: r for r in first["summary"]["methods"]}
    for name in ("optimized", "pez", "gcg"):
        row = rows[name]
        assert row["status"] == "ok" and row["kind"] == "readable prompt" and row["trainable_params"] == 0
        assert row["train_rows"] == 16 and row["train_seconds"] > 0 and row["stored_bytes"] > 0
        assert [p["train_size"] for p in first["summary"]["curves"][name]] == [8, 16]
    assert rows["optimized"]["model_calls"] > 0 and rows["pez"]["model_calls"] is None
    md = (out / "report.md").read_text()
    assert "| model calls |" in md and "| optimized | readable prompt |" in md and "| pez | readable prompt |" in md

    # each cell's accuracy is its stored template's, scored as a hard prompt on the test rows
    backbone = Backbone.load(str(tiny_model_dir))
    split = make_split(task_file, None, None, None, None)
    cells = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    searched = [c for c in cells if c["arm"]["name"] in ("optimized", "pez", "gcg")]
    assert len(searched) == 6
    for cell in searched:
        template = Template.from_dict(cell["prompt"])
        assert "[soft" not in json.dumps(cell["prompt"])
        task = PromptTask.create(backbone, split.labels(), "zero-shot", {}, template)
        calibrated = bool(cell.get("calibration"))  # a search's calibration is scored with its template
        assert calibrated == (cell["arm"]["name"] == "optimized" and cell["label_offsets"] is not None)
        task.model.verbalizer.calibration = cell.get("label_offsets")
        assert task.evaluate(split.test, calibrate=calibrated)["accuracy"] == pytest.approx(cell["accuracy"])
        assert 0 <= cell["best_val_accuracy"] <= 1 and cell["n_test"] == len(split.test) == 8
    pez = next(c for c in searched if c["arm"]["name"] == "pez")
    assert all(text in pez["prompt"]["user"] + pez["prompt"]["answer"] for text in pez["search"]["text"].values())
    assert pez["steps"] == 4 and len(pez["search"]["text"]) == 2  # classify's two slots
    gcg = next(c for c in searched if c["arm"]["name"] == "gcg")
    assert gcg["steps"] == 2 and gcg["search"]["lr"] is None and len(gcg["search"]["text"]) == 2

    again = compare(task_file, out, tiny_model_dir, **kw)
    assert (again["ran"], again["reused"]) == (0, 7)
    assert again["summary"]["methods"] == first["summary"]["methods"]


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ("optimized.optimizer=adam", "optimized.optimizer=adam: choose one of bootstrap, random-search, mipro"),
        ("optimized.max_candidates=0", "optimized.max_candidates=0: give a whole number from 1"),
        ("optimized.max_candidates=many", "optimized.max_candidates=many: expected an integer"),
        ("optimized.max_seconds=-1", "optimized.max_seconds=-1.0: give seconds above 0"),
        ("optimized.lr=0.1", "optimized.lr: the optimizer trains nothing"),
        ("optimized.temperature=1", "optimized.temperature: not a setting of optimized"),
        ("optimized.instruction=Be brief.", "optimized.instruction=Be brief.: instructions are searched by mipro"),
        ("pez.tokens=0", "pez.tokens=0: give 1 to 64 tokens"),
        ("pez.vocab=emoji", "pez.vocab=emoji: choose one of readable, words, all"),
        ("pez.init=soft", "pez.init=soft: choose one of labels, vocab, text"),
        ("pez.max_steps=0", "pez.max_steps=0: must be 1-10,000"),
        ("pez.demos=2", "pez.demos: the search learns the prompt's tokens"),
        ("gcg.lr=0.1", "gcg.lr: gcg tries swaps; it has no learning rate"),
        ("pez.confirm=maybe", "pez.confirm=maybe: expected true or false"),
        ("gcg.confirm=true", "gcg.confirm: not a setting of gcg"),
        ("gcg.top_k=0", "gcg.top_k=0: must be 1-4,096"),
        ("gcg.candidates=600", "gcg.candidates=600: must be 1-512"),
        ("gcg.tokens=65", "gcg.tokens=65: give 1 to 64 tokens"),
        ("pez.init=text", "pez.init=text and pez.init_text=WORDS go together"),
    ],
)
def test_bad_settings_are_errors_naming_the_option(item, says):
    name = item.split(".")[0]
    with pytest.raises(PromptTuneError) as e:
        resolve([name], parse_options([item]))
    assert says in str(e.value)


def test_settings_are_typed_and_checked_before_anything_runs(task_file, tmp_path, tiny_model_dir):
    opts = parse_options(["optimized.optimizer=mipro", "optimized.max_seconds=60", "pez.tokens=3", "pez.lr=0.1",
                         "pez.confirm=true"])  # fmt: skip
    (opt, pez) = resolve(["optimized", "pez"], opts)
    assert opt.options == {"optimizer": "mipro", "max_seconds": 60.0}
    assert pez.options == {"tokens": 3, "lr": 0.1, "confirm": True}
    out = tmp_path / "never"
    result = CliRunner().invoke(
        cli.app,
        ["compare", str(task_file), "--out", str(out), "--methods", "pez", "-o", "pez.vocab=emoji", "--model",
         str(tiny_model_dir)],
    )  # fmt: skip
    assert result.exit_code != 0 and "pez.vocab=emoji" in result.output + str(result.exception)
    assert not out.exists()  # refused before anything ran or was written


def test_generation_data_refuses_the_searched_arms(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "gen.jsonl", [{"text": f"in {i}", "target": f"out {i}"} for i in range(20)])
    with pytest.raises(PromptTuneError, match="--methods optimized: not for generation data"):
        run_compare(data, tmp_path / "g", methods="zero-shot,optimized", model=str(tiny_model_dir), isolate=False)


def test_a_program_as_a_template_is_the_prompt_the_program_shows(tiny_backbone):
    step = Predict("text -> label: one of positive, negative", instruction="Say the {{ sentiment }}.")
    step.demos = [{"text": "a great movie", "label": "positive"}, {"text": "boring and bad", "label": "negative"}]
    template = as_template(Pipeline([("classify", step)]), {"positive": "pos"})
    assert [d["label"] for d in template.demos] == ["pos", "negative"]  # answers mapped back to labels
    template = as_template(Pipeline([("classify", step)]))
    row = {"text": "I loved it"}
    lm = BackboneLM(tiny_backbone)
    shown = Template.from_spec(lm._spec(step.prompt(row))).hard().compile(tiny_backbone.tokenizer, [], 1)
    task = PromptTask.create(tiny_backbone, ["positive", "negative"], "zero-shot", {}, template)
    compiled = task.model.compiled
    assert compiled.prefix_text + compiled.render_row(row) == shown.prefix_text + shown.render_row(
        {"row": step.user_text(row)}
    )
    assert compiled.label_text("positive") == " positive"  # as choose scores it after "label:"
    with pytest.raises(DataError, match="one Predict step"):
        as_template(Pipeline([("think", ChainOfThought("text -> label: one of a, b"))]))
    with pytest.raises(DataError, match="label set"):
        as_template(Pipeline([("say", Predict("text -> summary"))]))


def test_a_found_programs_batch_offsets_score_the_cell(task_file, tmp_path, tiny_model_dir, monkeypatch):
    """A search that returns a batch-calibrated program: its offsets are the template's calibration in the cell
    (here rigged to push every row to "negative", so the cell's accuracy is the test rows' share of it)."""
    from prompttune.programs import optimizers
    from prompttune.programs.search import Result

    real = optimizers.optimize

    def rigged(name, program, *args, **kw):
        found = real(name, program, *args, **kw)
        step = found.program.steps[0]
        step.calibrate = False
        step.offsets = {o: (9.0 if o == "positive" else -9.0) for o in step.outputs[-1].options}
        return Result(found.program, found.best_val_score, found.baseline_val_score, 1, 1, 0.1)

    monkeypatch.setattr(optimizers, "optimize", rigged)
    out = tmp_path / "cmp"
    small = [o for o in SMALL if o.startswith("optimized.")]
    compare(task_file, out, tiny_model_dir, methods="optimized", train_sizes="8", method_options=small)
    (cell,) = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    split = make_split(task_file, None, None, None, None)
    assert cell["calibration"] == "batch" and cell["label_offsets"] == [-9.0, 9.0]  # labels: negative, positive
    assert cell["accuracy"] == pytest.approx(sum(r.label == "negative" for r in split.test.rows) / len(split.test))


def test_an_ensemble_found_scores_the_members_summed_label_scores(task_file, tmp_path, tiny_model_dir, monkeypatch):
    """A search that keeps an ensemble of two prompts (rigged: the first leans "negative" by 6 nats, the second
    "positive" by 18): the cell scores every member's template and adds their label scores, so the second wins every
    row (a vote would tie and follow the first); the record lists both prompts and their offsets."""
    from prompttune.programs import optimizers
    from prompttune.programs.ensemble import Ensemble
    from prompttune.programs.search import Result

    real = optimizers.optimize

    def rigged(name, program, *args, **kw):
        found = real(name, program, *args, **kw)
        members = []
        for push in (3.0, -9.0):  # calibration subtracts: +3 on positive leans negative
            member = Pipeline([("classify", Predict(found.program.steps[0].signature))])
            step = member.steps[0]
            step.offsets = {o: (push if o == "positive" else -push) for o in step.outputs[-1].options}
            members.append(member)
        return Result(Ensemble(members), found.best_val_score, found.baseline_val_score, 1, 1, 0.1)

    monkeypatch.setattr(optimizers, "optimize", rigged)
    out = tmp_path / "cmp"
    small = [o for o in SMALL if o.startswith("optimized.")] + ["optimized.ensemble=2"]
    compare(task_file, out, tiny_model_dir, methods="optimized", train_sizes="8", method_options=small)
    (cell,) = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert cell["status"] == "ok", cell.get("error")
    split = make_split(task_file, None, None, None, None)
    assert cell["accuracy"] == pytest.approx(sum(r.label == "positive" for r in split.test.rows) / len(split.test))
    assert len(cell["prompt"]) == 2 and cell["calibration"] == ["batch", "batch"]
    assert cell["label_offsets"] == [[-3.0, 3.0], [9.0, -9.0]]  # labels: negative, positive
    assert cell["search"]["config"]["ensemble"] == 2 and cell["trainable_params"] == 0


@pytest.mark.parametrize(
    ("items", "says"),
    [
        (["optimized.ensemble=9"], "optimized.ensemble=9"),
        (["optimized.ensemble_select=best"], "optimized.ensemble_select=best"),
        (["optimized.formats=maybe"], "optimized.formats=maybe: expected true or false"),
        (["optimized.ensemble=3", "optimized.calibrate=true"], "an ensemble's members keep the calibration"),
    ],
)
def test_bad_ensemble_settings_are_errors_naming_the_option(items, says):
    with pytest.raises(PromptTuneError) as e:
        resolve(["optimized"], parse_options(items))
    assert says in str(e.value)
