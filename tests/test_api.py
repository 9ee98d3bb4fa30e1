"""The Python API alone (no CLI): train, save, reload and evaluate a soft prompt and a head task."""

import json

import pytest
import torch
from tiny import make_encoder

import prompttune
from prompttune import Backbone, Callback, HeadTask, PromptTask, TrainConfig


def test_soft_prompt_trains_saves_reloads_and_evaluates(tiny_backbone, sentiment_rows, tmp_path):
    task = PromptTask.create(tiny_backbone, ["negative", "positive"], "prompt-tuning", {"num_virtual_tokens": 4})
    steps, validations = [], []
    result = task.fit(
        sentiment_rows[:32],
        sentiment_rows[32:],
        TrainConfig(max_steps=12, batch_size=8, eval_every=4, warmup_steps=2),
        callbacks=[Callback(on_step=lambda ev: steps.append(ev["step"]), on_validation=validations.append)],
    )
    assert result.metric == "accuracy" and result.steps == 12 and steps == list(range(1, 13))
    assert [v["step"] for v in validations] == [4, 8, 12] and all(v["metric"] == "accuracy" for v in validations)
    assert result.best_val == max(h["val"] for h in result.history)
    task.save(tmp_path / "art")
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["metrics"]["metric"] == "accuracy" and manifest["metrics"]["steps"] == 12
    assert manifest["data"]["n_train"] == 32 and manifest["training"]["lr"] == 0.01  # the method's default lr
    before = task.evaluate(sentiment_rows[32:])
    again = prompttune.load(tmp_path / "art", tiny_backbone)
    assert isinstance(again, PromptTask)
    after = again.evaluate(sentiment_rows[32:])
    assert after["accuracy"] == before["accuracy"] and after["n"] == len(sentiment_rows) - 32
    assert [p.label for p in again.predict(["a great movie"])] == [p.label for p in task.predict(["a great movie"])]


def test_fit_without_validation_rows_carves_a_seeded_split(tiny_backbone, sentiment_rows):
    task = PromptTask.create(tiny_backbone, ["negative", "positive"], "prompt-tuning", {"num_virtual_tokens": 2})
    task.fit(sentiment_rows, config=TrainConfig(max_steps=2, batch_size=8, eval_every=2, seed=3))
    assert task.record["data"]["n_train"] + task.record["data"]["n_val"] == len(sentiment_rows)
    assert task.record["data"]["val"] == "seeded 10% of train"


def test_a_hard_prompt_fits_by_validating_only(tiny_backbone, sentiment_rows):
    task = PromptTask.create(tiny_backbone, ["negative", "positive"], "zero-shot", {})
    result = task.fit(sentiment_rows[:8], sentiment_rows[8:])
    assert result.steps == 0 and result.history == [{"step": 0, "val": result.best_val}]


def test_head_task_trains_saves_reloads_and_evaluates(tmp_path):
    encoder = Backbone.load(str(make_encoder(tmp_path / "encoder")))
    rows = [
        {"tokens": ["the", "cat", "sat", "on", "the", "mat"], "tags": ["O", "B-ANI", "O", "O", "O", "B-OBJ"]},
        {"tokens": ["a", "great", "movie"], "tags": ["O", "O", "B-OBJ"]},
        {"tokens": ["the", "cat", "loved", "it"], "tags": ["O", "B-ANI", "O", "O"]},
    ] * 4
    task = HeadTask.create(encoder, "tokens", ["B-ANI", "B-OBJ", "O"], "p-tuning-v2", {"num_virtual_tokens": 4})
    result = task.fit(rows, rows, TrainConfig(max_steps=6, batch_size=4, eval_every=3, lr=0.05))
    assert result.metric == "f1" and 0.0 <= result.best_val <= 1.0 and result.steps == 6
    task.save(tmp_path / "ner")
    again = prompttune.load(tmp_path / "ner", encoder)
    assert isinstance(again, HeadTask) and again.kind == "tokens"
    assert again.evaluate(rows)["f1"] == pytest.approx(task.evaluate(rows)["f1"])
    assert again.predict(rows[:1]) == task.predict(rows[:1])


def test_library_train_verb_reads_a_file_once_and_saves(tiny_backbone, sentiment_file, tmp_path, monkeypatch):
    from prompttune.core import data

    reads = []
    original = data.load_rows
    monkeypatch.setattr("prompttune.api.load_rows", lambda p: reads.append(p) or original(p))
    task, result, summary = prompttune.train_from_file(
        sentiment_file,
        tmp_path / "out",
        method_config=["num_virtual_tokens=3"],
        config=TrainConfig(max_steps=2, batch_size=8, eval_every=2),
        backbone=tiny_backbone,
    )
    assert reads == [sentiment_file]
    assert summary["artifact"] == str(tmp_path / "out") and summary["steps"] == 2
    assert task.model.method.config.num_virtual_tokens == 3
    assert prompttune.load(tmp_path / "out", tiny_backbone).labels == ["negative", "positive"]


def test_train_config_refuses_bad_values():
    for bad, flag in (
        ({"max_steps": 0}, "--max-steps"),
        ({"lr": float("nan")}, "--lr"),
        ({"lr": float("inf")}, "--lr"),
        ({"ema": 2.0}, "--ema"),
        ({"batch_size": 0}, "--batch-size"),
    ):
        with pytest.raises(prompttune.PromptTuneError, match=flag):
            TrainConfig(**bad)


def test_the_trainer_stops_on_a_diverging_loss(tiny_backbone, sentiment_rows, monkeypatch):
    from prompttune.label_words.verbalizer_objective import VerbalizerObjective

    task = PromptTask.create(tiny_backbone, ["negative", "positive"], "prompt-tuning", {"num_virtual_tokens": 2})
    monkeypatch.setattr(VerbalizerObjective, "batch_loss", lambda self, batch: torch.tensor(float("nan")))
    with pytest.raises(prompttune.PromptTuneError, match="diverged"):
        task.fit(sentiment_rows[:8], sentiment_rows[8:16], TrainConfig(max_steps=2, batch_size=4))


def test_text_fields_the_built_in_template_never_shows_are_named(tiny_backbone, tmp_path):
    from prompttune.core.data import from_records, unused_text_fields

    rows = [
        {"text_a": f"he sat on bank {i} .", "text_b": f"the bank {i} lent money .", "word": "bank",
         "label": "true" if i % 2 else "false", "idx": i, "id1": f"a{i}", "sent_id": str(i), "n": i,
         "source": f"gj0{i % 3}", "note": "seen twice" if i == 3 else f"x{i}"}
        for i in range(24)
    ]  # fmt: skip
    data = tmp_path / "wic.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert unused_text_fields(from_records(rows, "rows"), ["text_a", "text_b"]) == ["note", "word"]
    assert unused_text_fields(from_records(rows, "rows"), ["text_a", "text_b", "word", "note"]) == []
    seen = []
    _, _, summary = prompttune.train_from_file(
        data, None, method="prompt-tuning", config=TrainConfig(max_steps=1, batch_size=8),
        backbone=tiny_backbone, on_start=lambda task, info: seen.extend(info["warnings"]),
    )  # fmt: skip
    assert len(seen) == 1 and "note, word fields are never shown" in seen[0] and "--template" in seen[0]
    assert seen[0] in summary["warnings"]
    template = {"user": "[soft]{{ text_a }} / {{ text_b }} / {{ word }} {{ note }}", "answer": "[soft]"}
    _, _, summary = prompttune.train_from_file(
        data, None, template=template, config=TrainConfig(max_steps=1, batch_size=8), backbone=tiny_backbone
    )
    assert not any("never shown" in w for w in summary["warnings"])
