"""`prompttune eval` of hard prompts: the one-label warning, calibration checked on labelled rows (the default,
"auto") and applied only when it helps, and the built-in template for yes/no questions about a passage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import NEG, POS, write_jsonl
from typer.testing import CliRunner

from prompttune import PromptTask
from prompttune.cli.app import app
from prompttune.core.data import QUESTION_PASSAGE_FIELDS, from_records, infer_fields
from prompttune.core.errors import PromptTuneError
from prompttune.core.metrics import classification_report, one_label_warning
from prompttune.core.template import BUILTIN, Template
from prompttune.hard.calibration_check import CHECK_MIN, CalibrationCheck, check_rows, decide
from prompttune.hard.evaluate import evaluate_template
from prompttune.hard.fewshot import NearestDemos, select_random

# One label's word is ten tokens long, so a random tiny model gives every row the other label.
ONE_SIDED = "positive=p;negative=the the the the the the the the the the"


def labelled(n_each: int) -> list[dict]:
    out = []
    for i in range(n_each):
        out += [
            {"text": f"{POS[i % len(POS)]} #{i}", "label": "positive"},
            {"text": f"{NEG[i % len(NEG)]} #{i}", "label": "negative"},
        ]
    return out


def run(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    if isinstance(res.exception, PromptTuneError):
        raise res.exception
    assert res.exit_code == 0, res.output
    return res


def last_json(res) -> dict:
    return json.loads(res.stdout.splitlines()[-1])


def fake_embed(texts: list[str]) -> np.ndarray:
    """Deterministic bag-of-letters vectors, L2-normalised (stands in for MiniLM)."""
    out = np.zeros((len(texts), 26), dtype=np.float32)
    for i, t in enumerate(texts):
        for ch in t.lower():
            if "a" <= ch <= "z":
                out[i, ord(ch) - 97] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


# --- nearly all one label ------------------------------------------------------------------------------


def test_one_label_is_flagged_only_when_the_gold_rows_are_not_that_skewed():
    labels = ["negative", "positive"]
    gold = torch.tensor([0, 1] * 15)
    flag = classification_report(torch.ones(30, dtype=torch.long), gold, labels)["one_label"]
    assert flag == {"label": "positive", "count": 30, "share": 1.0, "gold_share": 0.5}
    nearly = torch.tensor([1] * 28 + [0, 0])  # 93% one label
    assert classification_report(nearly, gold, labels)["one_label"]["share"] == pytest.approx(28 / 30)
    mixed = torch.tensor([1] * 20 + [0] * 10)
    assert classification_report(mixed, gold, labels)["one_label"] is None
    skewed_gold = torch.tensor([1] * 29 + [0])  # the data itself is 97% positive: predicting it is no failure
    assert classification_report(torch.ones(30, dtype=torch.long), skewed_gold, labels)["one_label"] is None
    few = classification_report(torch.ones(10, dtype=torch.long), gold[:10], labels)
    assert few["one_label"] is None and few["predicted_share"] == {"negative": 0.0, "positive": 1.0}


def test_eval_warns_on_stderr_and_in_json_when_every_row_gets_one_label(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "test.jsonl", labelled(12))
    args = ("--verbalizer", ONE_SIDED, "--no-calibrate", "--model", tiny_model_dir)
    res = run("eval", "classify", data, *args, "--json")
    report = last_json(res)
    assert report["one_label"] == {"label": "positive", "count": 24, "share": 1.0, "gold_share": 0.5}
    assert "warning: 24 of 24 predictions (100%) are 'positive' (the gold rows: 50%)" in res.stderr
    assert "warning" not in res.stdout
    table = run("eval", "classify", data, *args)
    assert "accuracy 0.5000 on 24 rows" in table.stdout and "are 'positive'" in table.stderr
    assert f"warning: {one_label_warning(report)}" in table.stderr


# --- calibration: auto (the default), on, off --------------------------------------------------------------


def test_decide_applies_calibration_only_when_it_is_more_accurate_on_the_check_rows():
    gold = torch.tensor([0, 1, 1, 0])
    right, wrong = torch.eye(2)[gold].log(), torch.eye(2)[1 - gold].log()
    check = CalibrationCheck(from_records(["a"] * 4), "test")
    assert decide(check, wrong, right, gold) is True
    assert check.accuracy == {"accuracy_uncalibrated": 0.0, "accuracy_calibrated": 1.0}
    assert decide(check, right, wrong, gold) is False
    assert decide(check, right, right, gold) is False  # a tie keeps the raw scores
    assert decide(CalibrationCheck(from_records([]), "none"), right, right, torch.tensor([])) is False


def test_auto_sets_aside_a_seeded_part_of_the_data_and_reports_on_the_rest(tiny_backbone):
    rows = from_records(labelled(25))  # 50 rows: 20 checked, 30 reported
    t = Template.from_spec("classify")
    report = evaluate_template(t, rows, tiny_backbone, calibrate="auto", seed=3)
    cal = report["calibration"]
    assert report["n"] == 30 and cal["check_rows"] == CHECK_MIN == cal["held_out_of_report"] == 20
    assert cal["mode"] == "auto" and "left out of the figures above" in cal["check_source"]
    assert cal["applied"] == (cal["check_accuracy_calibrated"] > cal["check_accuracy_uncalibrated"])
    assert report["calibrated"] == cal["applied"]
    chosen = "accuracy_calibrated" if cal["applied"] else "accuracy_uncalibrated"
    assert report["accuracy"] == pytest.approx(cal["reported_rows"][chosen])
    # the same rows, forced either way, score what auto reported as the alternatives (same seed: same split)
    check, rest = check_rows(rows, None, None, [], ["text"], 3)
    on = evaluate_template(t, rest, tiny_backbone, calibrate=True)
    off = evaluate_template(t, rest, tiny_backbone, calibrate=False)
    assert on["accuracy"] == pytest.approx(cal["reported_rows"]["accuracy_calibrated"])
    assert off["accuracy"] == pytest.approx(cal["reported_rows"]["accuracy_uncalibrated"])
    assert on["calibrated"] is True and off["calibrated"] is False and "reported_rows" not in off["calibration"]


def test_auto_with_too_few_rows_does_not_calibrate_and_says_why(tiny_backbone):
    report = evaluate_template(
        Template.from_spec("classify"), from_records(labelled(4)), tiny_backbone, calibrate="auto"
    )
    assert report["n"] == 8 and report["calibrated"] is False
    assert report["calibration"]["check_rows"] == 0 and "too few" in report["calibration"]["check_source"]


def test_auto_checks_on_demo_pool_rows_that_are_not_shown(tiny_backbone):
    pool = from_records(labelled(20))
    shots = select_random(pool, ["text"], 4, seed=0)
    check, rest = check_rows(from_records(labelled(4)), pool, None, shots, ["text"], 0)
    shown = {(s["text"], s["label"]) for s in shots}
    assert len(check.rows) == 36 and len(rest) == 8 and check.held_out == 0
    assert not shown & {(r.fields["text"], r.label) for r in check.rows}
    assert check.skip == [pool.rows.index(r) for r in check.rows.rows]  # its own pool index, for knn
    report = evaluate_template(
        Template.from_spec("classify"),
        from_records(labelled(4)),
        tiny_backbone,
        calibrate="auto",
        demos=2,
        demos_from=pool,
    )
    assert report["n"] == 8 and report["calibration"]["check_rows"] == 38  # 40 pool rows less the 2 demos
    assert report["calibration"]["check_source"].startswith("--demos-from <memory>: 38 rows not shown as demos")


def test_knn_check_rows_never_get_themselves_as_demos():
    pool = from_records([{"text": t, "label": "x"} for t in ["zzz zzz", "a great movie", "the cat sat", "great movie"]])
    nearest = NearestDemos(pool, ["text"], 2, fake_embed)
    (own,) = nearest.indices([pool.rows[1]])
    (skipped,) = nearest.indices([pool.rows[1]], skip=[1])
    assert own[-1] == 1 and 1 not in skipped and len(skipped) == 2


def test_eval_cli_auto_is_the_default_and_names_its_check_rows(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "test.jsonl", labelled(25))
    check = write_jsonl(tmp_path / "check.jsonl", labelled(15))
    held = last_json(run("eval", "classify", data, "--model", tiny_model_dir, "--json"))
    assert held["n"] == 30 and held["calibration"]["mode"] == "auto"
    full = last_json(run("eval", "classify", data, "--calibration-rows", check, "--model", tiny_model_dir, "--json"))
    assert full["n"] == 50 and full["calibration"]["held_out_of_report"] == 0
    assert full["calibration"]["check_source"].startswith(f"--calibration-rows {check}: 30 of its 30 rows")
    text = run("eval", "classify", data, "--calibration-rows", check, "--model", tiny_model_dir).stdout
    assert "calibration (auto): " in text and f"Check rows: --calibration-rows {check}" in text.replace("\n", " ")
    on = last_json(run("eval", "classify", data, "--calibrate", "--model", tiny_model_dir, "--json"))
    off = last_json(run("eval", "classify", data, "--no-calibrate", "--model", tiny_model_dir, "--json"))
    assert (on["n"], on["calibrated"], off["n"], off["calibrated"]) == (50, True, 50, False)
    assert full["accuracy"] in (on["accuracy"], off["accuracy"])


def test_eval_calibration_rows_errors(tmp_path, tiny_model_dir, tiny_backbone):
    data = write_jsonl(tmp_path / "test.jsonl", labelled(4))
    few = write_jsonl(tmp_path / "few.jsonl", labelled(3))
    with pytest.raises(PromptTuneError, match=r"--calibration-rows .*few.jsonl: 6 rows; give at least 20"):
        run("eval", "classify", data, "--calibration-rows", few, "--model", tiny_model_dir)
    with pytest.raises(PromptTuneError, match="--calibration-rows: used only to decide"):
        run("eval", "classify", data, "--calibration-rows", few, "--no-calibrate", "--model", tiny_model_dir)
    task = PromptTask.create(tiny_backbone, ["negative", "positive"], "prompt-tuning", {"num_virtual_tokens": 2})
    task.save(tmp_path / "art")
    with pytest.raises(PromptTuneError, match="--calibration-rows apply to hard prompts"):
        run("eval", tmp_path / "art", data, "--calibration-rows", few, "--model", tiny_model_dir)
    with pytest.raises(PromptTuneError, match="calibrate='often'"):
        evaluate_template(Template.from_spec("classify"), from_records(labelled(1)), tiny_backbone, calibrate="often")


# --- yes/no questions about a passage -------------------------------------------------------------------


BOOLQ = [
    {"question": "is the sky green", "passage": "The sky is blue on a clear day.", "label": "false", "idx": 0},
    {"question": "is water wet", "passage": "Water makes things wet.", "label": "true", "idx": 1},
]


def test_question_passage_rows_get_the_yes_no_template(tmp_path, tiny_backbone, tiny_model_dir):
    rows = from_records(BOOLQ)
    assert infer_fields(rows) == QUESTION_PASSAGE_FIELDS
    assert Template.from_spec(None, QUESTION_PASSAGE_FIELDS) == Template.from_spec("qa-yes-no")
    assert set(BUILTIN["qa-yes-no"]["variables"]) == {"question", "passage"}
    task = PromptTask.for_data(tiny_backbone, rows, "zero-shot")
    assert task.model.template == Template.from_spec("qa-yes-no") and task.labels == ["false", "true"]
    data = write_jsonl(tmp_path / "boolq.jsonl", BOOLQ * 3)
    report = last_json(run("eval", "qa-yes-no", data, "--model", tiny_model_dir, "--json"))
    assert report["n"] == 6 and set(report["per_class"]) == {"false", "true"}
    shown = run("templates", "render", "qa-yes-no", "--var", "question=is water wet", "--var", "passage=Water is.")
    assert "Passage: Water is." in shown.stdout and "Question: is water wet" in shown.stdout
