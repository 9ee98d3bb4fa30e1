"""`prompttune templates list|show|render`, few-shot demo selection, and `eval` of hard prompts
(built-in names, template files, registry references) scored like soft prompts."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import NEG, POS, write_jsonl
from typer.testing import CliRunner

from prompttune import PromptTask
from prompttune.cli.app import app
from prompttune.core.data import from_records
from prompttune.core.errors import PromptTuneError, TemplateError
from prompttune.core.template import BUILTIN, Template
from prompttune.hard.evaluate import evaluate_template
from prompttune.hard.fewshot import NearestDemos, select_fixed, select_random


def invoke(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    if isinstance(res.exception, PromptTuneError):
        raise res.exception
    assert res.exit_code == 0, res.output
    return res.output


def labelled(n_each: int = 4) -> list[dict]:
    out = []
    for i in range(n_each):
        out += [{"text": POS[i % len(POS)], "label": "positive"}, {"text": NEG[i % len(NEG)], "label": "negative"}]
    return out


# --- templates list / show / render -------------------------------------------------------------------------


def test_list_names_every_builtin():
    rows = json.loads(invoke("templates", "list", "--json"))
    assert [r["name"] for r in rows] == list(BUILTIN)
    for name in ("classify", "classify-pair", "qa-yes-no", "qa", "qa-extractive", "summarize", "cot", "react", "rag"):
        assert name in BUILTIN
    react = next(r for r in rows if r["name"] == "react")
    assert react["variables"][:2] == ["question", "tools"] and react["description"]


def test_show_prints_yaml_that_loads_back(tmp_path):
    text = invoke("templates", "show", "react")
    assert "Final Answer:" in text and "variables:" in text
    (tmp_path / "mine.yaml").write_text(text)
    assert Template.from_spec(str(tmp_path / "mine.yaml")) == Template.from_spec("react")


def test_render_through_the_backbones_chat_template(tiny_model_dir):
    text = invoke(
        "templates", "render", "rag", "--var", "question=Who?", "--var", "context=[1] Ada.", "--model", tiny_model_dir
    )
    assert text.startswith("<|im_start|>system\nAnswer the question using only the context.")
    assert "Context:\n[1] Ada.\n\nQuestion: Who?<|im_end|>\n<|im_start|>assistant\nAnswer:" in text


def test_render_messages_and_values_from_files(tmp_path):
    (tmp_path / "ctx.txt").write_text('{"json": [1, 2]} and {{ not a variable }}')
    out = json.loads(
        invoke(
            "templates", "render", "rag", "--messages", "--var", "question=q", "--var", f"context=@{tmp_path}/ctx.txt"
        )
    )
    assert out["messages"][-1]["content"].startswith('Context:\n{"json": [1, 2]} and {{ not a variable }}')
    assert out["answer_prefix"] == "Answer:"


def test_render_labels_for_classification_templates():
    out = json.loads(
        invoke("templates", "render", "classify", "--messages", "--var", "text=hi", "--labels", "bad,good")
    )
    assert "Possible labels: bad, good." in out["messages"][0]["content"]


def test_render_missing_or_unused_variable_is_an_error():
    with pytest.raises(TemplateError, match="missing variable 'tools'"):
        invoke("templates", "render", "react", "--messages", "--var", "question=q")
    with pytest.raises(TemplateError, match="variable 'qestion' is not used"):
        invoke("templates", "render", "qa", "--messages", "--var", "question=q", "--var", "qestion=typo")
    with pytest.raises(PromptTuneError, match="NAME=VALUE"):
        invoke("templates", "render", "qa", "--var", "question")


def test_cli_error_is_one_line(monkeypatch, capsys):
    from prompttune import cli

    monkeypatch.setattr(sys, "argv", ["prompttune", "templates", "render", "nope-not-a-template"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "nope-not-a-template: no such artifact" in err and "Traceback" not in err


# --- few-shot selection ---------------------------------------------------------------------------------


def test_fixed_demos_take_the_labels_in_turn():
    pool = from_records(labelled(4))
    demos = select_fixed(pool, ["text"], 3)
    assert [d["label"] for d in demos] == ["positive", "negative", "positive"]
    assert demos[0]["text"] == POS[0]


def test_random_demos_are_seeded_and_balanced():
    pool = from_records(labelled(5))
    a, b, c = (select_random(pool, ["text"], 4, seed) for seed in (0, 0, 1))
    assert a == b and a != c
    assert sorted(d["label"] for d in a) == ["negative", "negative", "positive", "positive"]


def fake_embed(texts: list[str]) -> np.ndarray:
    """Deterministic bag-of-letters vectors, L2-normalised (stands in for MiniLM)."""
    out = np.zeros((len(texts), 26), dtype=np.float32)
    for i, t in enumerate(texts):
        for ch in t.lower():
            if "a" <= ch <= "z":
                out[i, ord(ch) - 97] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_knn_demos_are_the_nearest_rows_nearest_last():
    pool = from_records([{"text": t, "label": "x"} for t in ["zzz zzz", "a great movie", "the cat sat", "great movie"]])
    nearest = NearestDemos(pool, ["text"], 2, fake_embed)
    (idx,) = nearest.indices(from_records(["a great movie!"]).rows)
    assert idx == [3, 1]  # the exact match is nearest, so it comes last
    assert nearest.demos(idx)[-1]["text"] == "a great movie"


# --- eval of hard prompts -----------------------------------------------------------------------------


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "test.jsonl", labelled(4)), write_jsonl(tmp_path / "pool.jsonl", labelled(5))


def test_eval_builtin_template_matches_the_zero_shot_method(tiny_backbone, tiny_model_dir, data):
    test, _ = data
    report = json.loads(invoke("eval", "classify", test, "--model", tiny_model_dir, "--json").splitlines()[-1])
    task = PromptTask.create(tiny_backbone, ["negative", "positive"], "zero-shot", {}, "classify")
    assert report["accuracy"] == pytest.approx(task.evaluate(str(test))["accuracy"])
    assert report["n"] == 8 and report["demos"] == 0 and report["calibrated"] is False


def test_eval_few_shot_and_calibrated(tiny_backbone, data):
    test, pool = data
    rows, pool_rows = from_records(labelled(2)), from_records(labelled(5))
    t = Template.from_spec("classify")
    for selector in ("fixed", "random"):
        r = evaluate_template(t, rows, tiny_backbone, demos=2, demo_selector=selector, demos_from=pool_rows)
        assert r["n"] == 4 and r["demos"] == 2 and r["demo_selector"] == selector
    knn = evaluate_template(
        t, rows, tiny_backbone, demos=2, demo_selector="knn", demos_from=pool_rows, embed=fake_embed, calibrate=True
    )
    assert knn["n"] == 4 and knn["calibrated"] is True
    # knn with one demo per row: the same as scoring each row with its own nearest demo
    single = evaluate_template(
        t, rows, tiny_backbone, demos=1, demo_selector="knn", demos_from=pool_rows, embed=fake_embed
    )
    nearest = NearestDemos(pool_rows, ["text"], 1, fake_embed)
    hits = 0
    for row, idx in zip(rows.rows, nearest.indices(rows.rows), strict=True):
        task = PromptTask.create(
            tiny_backbone, ["negative", "positive"], "zero-shot", {}, t.hard().with_demos(nearest.demos(idx))
        )
        hits += task.predict([row.fields["text"]])[0].label == row.label
    assert single["accuracy"] == pytest.approx(hits / len(rows))


def test_eval_flag_errors(tiny_model_dir, data):
    test, pool = data
    with pytest.raises(PromptTuneError, match="--demos needs --demos-from"):
        invoke("eval", "classify", test, "--demos", "2", "--model", tiny_model_dir)
    with pytest.raises(PromptTuneError, match="--demo-selector 'nearest'"):
        invoke("eval", "classify", test, "--demos", "2", "--demos-from", pool, "--demo-selector", "nearest")
    with pytest.raises(PromptTuneError, match="missing field 'question'"):
        invoke("eval", "qa", test, "--model", tiny_model_dir)


def test_eval_template_file_and_registry_reference(tmp_path, tiny_model_dir, data):
    test, _ = data
    path = tmp_path / "mine.yaml"
    path.write_text("variables: {text: a review}\nuser: 'Review: {{ text }}'\nanswer: 'Sentiment:'\n")
    from_file = json.loads(invoke("eval", path, test, "--model", tiny_model_dir, "--json").splitlines()[-1])
    db = str(tmp_path / "reg.db")
    invoke("registry", "add", "mine", path, "--db", db, "--label", "production")
    ref = json.loads(
        invoke("eval", "mine@production", test, "--db", db, "--model", tiny_model_dir, "--json").splitlines()[-1]
    )
    assert ref["accuracy"] == from_file["accuracy"] and ref["prompt"].startswith("mine@production (mine@v1")


def test_eval_soft_prompt_from_the_registry(tmp_path, tiny_backbone, tiny_model_dir, data):
    test, _ = data
    task = PromptTask.create(tiny_backbone, ["negative", "positive"], "prompt-tuning", {"num_virtual_tokens": 2})
    task.save(tmp_path / "art")
    db = str(tmp_path / "reg.db")
    invoke("registry", "add", "soft", tmp_path / "art", "--db", db)
    direct = json.loads(invoke("eval", tmp_path / "art", test, "--model", tiny_model_dir, "--json").splitlines()[-1])
    via = json.loads(invoke("eval", "soft@v1", test, "--db", db, "--model", tiny_model_dir, "--json").splitlines()[-1])
    assert via["accuracy"] == direct["accuracy"] and via["per_class"] == direct["per_class"]
