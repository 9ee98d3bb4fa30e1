"""Read-out heads: classification, token tagging (seqeval F1), extractive QA (SQuAD EM/F1, windows)."""

from __future__ import annotations

import json
import random

import pytest
import torch
from tiny import make_encoder

from prompttune.api import load
from prompttune.core.backbone import Backbone
from prompttune.core.data import Dataset, from_records
from prompttune.core.errors import DataError
from prompttune.heads.qa import SpanKind, f1_score, normalize_answer, squad_scores
from prompttune.heads.tagging import TaggingKind, entity_scores, get_entities
from prompttune.heads.task import HeadTask
from prompttune.train import Callback, TrainConfig

NER = [
    {"tokens": ["the", "cat", "sat", "on", "the", "mat"], "tags": ["O", "B-ANI", "O", "O", "O", "B-OBJ"]},
    {"tokens": ["a", "great", "movie"], "tags": ["O", "O", "B-OBJ"]},
    {"tokens": ["the", "cat", "loved", "it"], "tags": ["O", "B-ANI", "O", "O"]},
    {"tokens": ["truly", "wonderful", "mat"], "tags": ["O", "O", "B-OBJ"]},
] * 3
QA = [
    {"context": "the cat sat on the mat", "question": "where sat the cat ?", "answers": ["the mat"],
     "answer_starts": [15]},
    {"context": "a great movie , truly wonderful and fun", "question": "what was great ?", "answers": ["movie"],
     "answer_starts": [8]},
    {"context": "I loved it , I hated it , what a waste", "question": "what was it ?", "answers": ["a waste"],
     "answer_starts": [31]},
] * 3  # fmt: skip
CLS = [{"text": t, "label": "positive"} for t in ["a great movie", "I loved it", "truly wonderful and fun"]] + [
    {"text": t, "label": "negative"} for t in ["a terrible film", "boring and bad", "what a waste"]
]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Backbone:
    return Backbone.load(str(make_encoder(tmp_path_factory.mktemp("tiny") / "encoder")))


# --- metrics -----------------------------------------------------------------------------------------
def test_entities_follow_seqeval_chunking():
    seq = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-ORG", "I-PER", "O", "B-MISC", "B-MISC"]
    assert get_entities(seq) == [
        ("PER", 0, 1),
        ("LOC", 3, 4),  # I- after O starts an entity
        ("ORG", 5, 5),
        ("PER", 6, 6),  # a type change starts a new one
        ("MISC", 8, 8),
        ("MISC", 9, 9),
    ]
    # sentences are joined with an O: an entity never spans two rows
    assert get_entities([["B-PER"], ["I-PER"]]) == [("PER", 0, 0), ("PER", 2, 2)]


def test_entity_f1_hand_made():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
    s = entity_scores(gold, pred)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)
    assert s["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert s["per_type"]["ORG"]["precision"] == pytest.approx(0.5) and s["per_type"]["ORG"]["recall"] == 1.0
    assert entity_scores([["O"]], [["O"]])["f1"] == 0.0


def test_entity_f1_equals_seqeval():
    seqeval = pytest.importorskip("seqeval.metrics")
    rng = random.Random(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-MISC", "B-MISC"]
    for _ in range(200):
        gold = [[rng.choice(tags) for _ in range(rng.randint(0, 8))] for _ in range(4)]
        pred = [[rng.choice(tags) for _ in s] for s in gold]
        ours = entity_scores(gold, pred)
        assert ours["f1"] == pytest.approx(seqeval.f1_score(gold, pred), abs=1e-12)
        assert ours["precision"] == pytest.approx(seqeval.precision_score(gold, pred), abs=1e-12)
        assert ours["recall"] == pytest.approx(seqeval.recall_score(gold, pred), abs=1e-12)


def test_squad_metric_hand_made():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert f1_score("Denver Broncos", "the Denver Broncos team") == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    s = squad_scores(["Denver Broncos", "Carolina", "nothing"], [["denver broncos"], ["Carolina Panthers"], ["x"]])
    assert s["exact_match"] == pytest.approx(100 / 3)
    assert s["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    # the max over gold answers
    assert squad_scores(["a dog"], [["cat", "the dog"]])["exact_match"] == 100.0


# --- windows and errors ----------------------------------------------------------------------------
def test_windowing_finds_an_answer_in_the_last_window(encoder):
    context = " ".join(["the cat sat on the mat ."] * 12) + " truly wonderful"
    row = from_records([{"context": context, "question": "what ?", "answers": ["truly wonderful"]}]).rows[0]
    task = HeadTask.create(encoder, "span", [], "zero-shot", {}, {"max_length": 40, "stride": 10})
    spans = task.head_kind.windows(task.model, row, 0, ("truly wonderful", context.index("truly wonderful")))
    assert len(spans) > 2
    assert [w.start >= 0 for w in spans] == [False] * (len(spans) - 1) + [True]
    last = spans[-1]
    assert encoder.tokenizer.decode(last.ids[last.start : last.end + 1]) == "truly wonderful"
    # windows overlap by the stride
    assert spans[1].offsets[0] == spans[0].offsets[-10]
    # decoding reads the best span of the last window back as the context's characters
    start, end = torch.full((len(last.ids),), -10.0), torch.full((len(last.ids),), -10.0)
    start[last.start], end[last.end] = 5.0, 5.0
    _, a, b = task.head_kind.best_span(start, end, last)
    assert context[last.offsets[a][0] : last.offsets[b][1]] == "truly wonderful"


def test_bad_rows_are_named(encoder):
    tagger = HeadTask.create(encoder, "tokens", ["O", "B-ANI"], "zero-shot", {})
    bad_tag = from_records([{"tokens": ["the", "cat"], "tags": ["O", "B-DOG"]}], "ner.jsonl")
    with pytest.raises(DataError, match=r"ner.jsonl item 1: tag 'B-DOG' \(token 2, 'cat'\)"):
        tagger.head_kind.encode(tagger.model, bad_tag)
    short = from_records([{"tokens": ["the", "cat"], "tags": ["O"]}], "ner.jsonl")
    with pytest.raises(DataError, match="item 1: 2 tokens but 1 tags"):
        tagger.head_kind.encode(tagger.model, short)
    reader = HeadTask.create(encoder, "span", [], "zero-shot", {})
    moved = from_records([{**QA[0], "answer_starts": [3]}], "qa.jsonl")
    with pytest.raises(DataError, match=r"qa.jsonl item 1: answer 1 'the mat' does not occur .* answer_start 3"):
        reader.head_kind.encode(reader.model, moved)
    absent = from_records([{**QA[0], "answers": ["the dog"], "answer_starts": []}], "qa.jsonl")
    with pytest.raises(DataError, match="'the dog' does not occur in the context anywhere"):
        reader.head_kind.encode(reader.model, absent)


def test_labels_and_task_from_the_data():
    from prompttune.heads.base import detect_kind

    assert TaggingKind.labels_from(from_records(NER)) == ["O", "B-ANI", "B-OBJ"]
    assert detect_kind(from_records(NER)) == "tokens"
    assert detect_kind(from_records(QA)) == "span"
    assert detect_kind(from_records(CLS)) is None
    assert SpanKind.matches(QA[0])


# --- training and artifacts ------------------------------------------------------------------------
def _train_and_reload(backbone, kind, rows, method, tmp_path):
    data = from_records(rows)
    labels = {"tokens": TaggingKind.labels_from, "span": lambda d: [], "classification": Dataset.labels}[kind](data)
    task = HeadTask.create(backbone, kind, labels, method, {"num_virtual_tokens": 4}, seed=0)
    examples = task.head_kind.encode(task.model, data, training=True)
    task.model.trainable.eval()  # no dropout: the same loss before and after
    with torch.no_grad():
        before = float(task.head_kind.loss(task.model, examples, task.model.prefix_kv()))
    config = TrainConfig(max_steps=12, batch_size=len(rows), lr=0.05, head_lr=0.05, eval_every=6, warmup_steps=1, ema=0)
    losses = []
    result = task.fit(data, data, config, callbacks=[Callback(on_step=lambda ev: losses.append(ev["loss"]))])
    assert sum(losses[-3:]) / 3 < losses[0]  # the training loss goes down
    task.model.trainable.eval()
    with torch.no_grad():
        after = float(task.head_kind.loss(task.model, examples, task.model.prefix_kv()))
    # the best validated state is kept: better than the start, or the start itself
    assert after < before if result.best_step else after == pytest.approx(before, abs=1e-5)
    first = task.predict(data)
    task.save(tmp_path / "art")
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["head"]["kind"] == kind and manifest["head"]["labels"] == labels
    loaded = load(tmp_path / "art", model=backbone)
    assert loaded.predict(data) == first
    state = task.model.trainable.trainable_state()
    assert any(k.startswith("head.") for k in state) and loaded.model.trainable.trainable_state().keys() == state.keys()
    return loaded


@pytest.mark.parametrize(
    ("kind", "rows", "method"),
    [
        ("tokens", NER, "p-tuning-v2"),
        ("span", QA, "p-tuning-v2"),
        ("classification", CLS, "prefix-tuning"),
        ("tokens", NER, "prompt-tuning"),  # soft input tokens inline on an encoder
        ("tokens", NER, "zero-shot"),  # a linear probe: the head alone
    ],
)
def test_encoder_heads_train_and_reload(encoder, kind, rows, method, tmp_path):
    _train_and_reload(encoder, kind, rows, method, tmp_path)


@pytest.mark.parametrize(("kind", "rows"), [("tokens", NER), ("span", QA), ("classification", CLS)])
def test_decoder_heads_train_and_reload(tiny_backbone, kind, rows, tmp_path):
    task = _train_and_reload(tiny_backbone, kind, rows, "p-tuning-v2", tmp_path)
    if kind == "classification":
        assert task.head_kind.settings["pool"] == "last"


def test_evaluate_reports_the_metric(encoder):
    task = HeadTask.create(encoder, "tokens", TaggingKind.labels_from(from_records(NER)), "zero-shot", {})
    report = task.evaluate(NER)
    assert {"f1", "precision", "recall", "per_type", "examples_per_s"} <= report.keys()
    reader = HeadTask.create(encoder, "span", [], "zero-shot", {})
    report = reader.evaluate(QA)
    assert {"exact_match", "f1", "n"} <= report.keys() and report["n"] == len(QA)


def test_cli_trains_evaluates_and_predicts_a_tagger(encoder, tmp_path):
    from typer.testing import CliRunner

    from prompttune.cli.app import app

    data = tmp_path / "ner.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in NER))
    model_dir = str(encoder.model.name_or_path)
    runner = CliRunner()
    art = tmp_path / "ner"
    res = runner.invoke(
        app,
        ["train", str(data), "--val", str(data), "--out", str(art), "--model", model_dir, "--max-steps", "4",
         "--batch-size", "4", "--num-virtual-tokens", "4", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["head"] == "tokens" and result["method"] == "p-tuning-v2" and result["metric"] == "f1"
    res = runner.invoke(app, ["eval", str(art), str(data), "--model", model_dir, "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert 0.0 <= report["f1"] <= 1.0 and "per_type" in report
    res = runner.invoke(app, ["predict", str(art), "the cat sat", "--model", model_dir, "--json"])
    assert res.exit_code == 0, res.output
    pred = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(pred["tags"]) == 3 and "entities" in pred
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"tokens": ["the", "cat"], "tags": ["O"]}) + "\n")
    res = runner.invoke(app, ["eval", str(art), str(bad), "--model", model_dir])
    assert res.exit_code != 0


def test_head_training_resumes_from_its_checkpoint(encoder, tmp_path):
    data = from_records(NER)
    labels = TaggingKind.labels_from(data)
    config = TrainConfig(max_steps=4, batch_size=4, lr=0.05, head_lr=0.05, eval_every=2, warmup_steps=1)
    first = HeadTask.create(encoder, "tokens", labels, "p-tuning-v2", {"num_virtual_tokens": 4})
    first.fit(data, data, config, checkpoint_dir=tmp_path / "ckpt")
    config.max_steps = 6
    again = HeadTask.create(encoder, "tokens", labels, "p-tuning-v2", {"num_virtual_tokens": 4})
    steps = []
    result = again.fit(
        data,
        data,
        config,
        checkpoint_dir=tmp_path / "ckpt",
        resume=True,
        callbacks=[Callback(on_step=lambda ev: steps.append(ev["step"]))],
    )
    assert steps[0] == 5 and result.steps == 6  # continued after step 4, with the head's state restored


def test_backbone_dropout_only_in_training_steps(encoder):
    from prompttune.heads.task import HeadObjective

    data = from_records(NER)
    labels = TaggingKind.labels_from(data)
    task = HeadTask.create(encoder, "tokens", labels, "p-tuning-v2", {"num_virtual_tokens": 4})
    examples = task.head_kind.encode(task.model, data, training=True)
    task.model.trainable.eval()  # the head's own dropout off: only the backbone's is under test
    losses = {}
    for dropout in (False, True):
        objective = HeadObjective(task.head_kind, task.model, examples, data, dropout=dropout)
        with torch.no_grad():
            losses[dropout] = [float(objective.batch_loss(list(range(len(examples))))) for _ in range(2)]
        assert not encoder.model.training  # back in eval mode after every step
        assert objective.validate() == objective.validate()  # validation never drops anything
    assert losses[False][0] == losses[False][1]
    assert losses[True][0] != losses[True][1]  # the backbone's dropout was on


@pytest.mark.parametrize("method", ["prefix-tuning", "p-tuning-v2"])
def test_random_init_warns_on_a_decoder_only(tiny_backbone, encoder, method):
    import warnings

    with pytest.warns(UserWarning, match="init random on a decoder"):
        HeadTask.create(tiny_backbone, "span", [], method, {"num_virtual_tokens": 4, "init": "random"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HeadTask.create(encoder, "span", [], method, {"num_virtual_tokens": 4, "init": "random"})
        HeadTask.create(tiny_backbone, "span", [], method, {"num_virtual_tokens": 4, "init": "vocab"})


def test_a_checkpoint_from_before_a_new_setting_still_resumes(encoder, tmp_path):
    data = from_records(NER)
    labels = TaggingKind.labels_from(data)
    config = TrainConfig(max_steps=2, batch_size=4, lr=0.05, eval_every=2, warmup_steps=1)
    HeadTask.create(encoder, "tokens", labels, "p-tuning-v2", {"num_virtual_tokens": 4}).fit(
        data, data, config, checkpoint_dir=tmp_path / "ckpt"
    )
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    del state["config"]["backbone_dropout"]  # written before the setting existed
    (tmp_path / "ckpt" / "state.json").write_text(json.dumps(state))
    config.max_steps = 3
    again = HeadTask.create(encoder, "tokens", labels, "p-tuning-v2", {"num_virtual_tokens": 4})
    assert again.fit(data, data, config, checkpoint_dir=tmp_path / "ckpt", resume=True).steps == 3
