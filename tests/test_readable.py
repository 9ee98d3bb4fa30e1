"""Soft prompts made readable: inspect (nearest tokens, norms, projected accuracy), harden nearest / pez, and
the template file they write (issue 15, item 3). Tiny random models; made-up tasks."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import yaml
from conftest import write_jsonl
from test_cli import assert_user_error, invoke, last_json, run_main  # noqa: F401, F811 (run_main: a fixture)
from tiny import CORPUS, make_decoder

from prompttune.core.data import from_records, load_rows
from prompttune.core.errors import ArtifactError, PromptTuneError
from prompttune.core.template import Template
from prompttune.prompt_task import PromptTask
from prompttune.readable import PezConfig, harden, inspect_artifact
from prompttune.readable.pez import run_pez
from prompttune.readable.soft import hard_task, soft_tables
from prompttune.readable.vocab import Vocabulary, special_ids

LABELS = ["negative", "positive"]


def word_tokens(backbone, n: int) -> list[int]:
    """``n`` distinct corpus words that are one token each with their leading space (they read back exactly)."""
    words = sorted({w for line in CORPUS for w in line.split() if w.isalpha()})
    ids = [backbone.tokenize(" " + w) for w in words]
    ids = [t[0] for t in ids if len(t) == 1]
    assert len(ids) >= n
    return ids[:n]


@pytest.fixture
def word_artifact(tmp_path, tiny_backbone):
    """A prompt-tuning artifact (built-in classify template: 3 soft tokens before the text, 4 before the answer)
    whose soft prompt is set to the embeddings of 7 real word tokens."""
    task = PromptTask.create(tiny_backbone, LABELS, "prompt-tuning", {"num_virtual_tokens": 3}, "classify")
    ids = word_tokens(tiny_backbone, 7)
    task.model.method.load_table(tiny_backbone.embedding_matrix.detach()[torch.tensor(ids)].float())
    path = task.save(tmp_path / "art")
    return path, ids


def test_nearest_returns_real_tokens_and_reconstructs_text_and_scores(
    tmp_path, tiny_backbone, word_artifact, sentiment_file
):
    path, ids = word_artifact
    out = tmp_path / "hard.yaml"
    report = harden(path, out, method="nearest", data=sentiment_file, backbone=tiny_backbone, vocab="all")
    found = [t for slot in sorted(report["token_ids"], key=int) for t in report["token_ids"][slot]]
    assert found == ids  # real ids, the ones the soft prompt was set to
    assert not set(found) & special_ids(tiny_backbone.tokenizer)
    assert report["roundtrip"] is True
    assert report["text"] == {
        "0": tiny_backbone.tokenizer.decode(ids[:3]),
        "1": tiny_backbone.tokenizer.decode(ids[3:]),
    }
    # the written template, read back as --template reads it, scores every row as the soft prompt does
    template = Template.from_spec(str(out))
    assert template.user == report["text"]["0"] + "{{ text }}" and template.answer == report["text"]["1"]
    rows = load_rows(sentiment_file)
    soft = PromptTask.create(tiny_backbone, LABELS, "prompt-tuning", {"num_virtual_tokens": 3}, "classify")
    soft.model.method.load_table(tiny_backbone.embedding_matrix.detach()[torch.tensor(ids)].float())
    hard = hard_task(tiny_backbone, template, soft.model.verbalizer)
    soft_scores = soft.model.score(soft.model.encode(rows), calibrate=False)
    hard_scores = hard.model.score(hard.model.encode(rows), calibrate=False)
    assert torch.allclose(soft_scores, hard_scores, atol=1e-5)
    assert report["accuracy"]["hardened"] == report["accuracy"]["soft"]
    assert report["accuracy"]["rows"] == len(rows)


def test_nearest_projects_a_trained_prompt_onto_its_nearest_tokens(tmp_path, tiny_backbone, word_artifact):
    path, ids = word_artifact
    task = PromptTask.create(tiny_backbone, LABELS, "prompt-tuning", {"num_virtual_tokens": 3}, "classify")
    noisy = tiny_backbone.embedding_matrix.detach()[torch.tensor(ids)].float()
    noisy = noisy + 0.3 * noisy.std() * torch.randn(noisy.shape, generator=torch.Generator().manual_seed(0))
    task.model.method.load_table(noisy)
    path = task.save(tmp_path / "noisy")
    report = harden(path, tmp_path / "n.yaml", method="nearest", backbone=tiny_backbone, vocab="readable")
    vocab = Vocabulary.of(tiny_backbone, "readable")
    expected = vocab.project(noisy).tolist()
    assert [t for k in ("0", "1") for t in report["token_ids"][k]] == expected
    assert set(expected) <= set(vocab.ids.tolist())
    assert report["accuracy"]["rows"] == 0 and report["accuracy"]["hardened"] is None  # no rows: not scored


def test_readable_vocabulary_reads_back(tiny_backbone):
    vocab = Vocabulary.of(tiny_backbone, "readable")
    everything = Vocabulary.of(tiny_backbone, "all")
    assert 0 < len(vocab) < len(everything)
    for i in vocab.ids.tolist():
        text = vocab.text(i)
        assert text.isascii() and text.isprintable() and "{" not in text
        assert tiny_backbone.tokenize(text) == [i]
    words = Vocabulary.of(tiny_backbone, "words")
    assert 0 < len(words) < len(vocab) and set(words.ids.tolist()) <= set(vocab.ids.tolist())
    texts = [words.text(i) for i in words.ids.tolist()]
    assert " movie" in texts and ":" in texts
    for text in texts:
        assert (text[0] == " " and text[1:].isalpha()) or not any(c.isalnum() for c in text)


def test_inspect_lists_nearest_tokens_norms_and_both_accuracies(tiny_backbone, word_artifact, sentiment_file):
    path, ids = word_artifact
    report = inspect_artifact(path, top=3, data=sentiment_file, limit=12, backbone=tiny_backbone)
    assert report["virtual_tokens"] == 7 and len(report["tokens"]) == 7
    for token, want in zip(report["tokens"], ids, strict=True):
        near = token["neighbours"]
        assert len(near) == 3 and near[0]["id"] == want
        assert near[0]["cosine"] == pytest.approx(1.0, abs=1e-5) and near[0]["distance"] == pytest.approx(0, abs=1e-5)
        assert near[0]["cosine"] >= near[1]["cosine"] >= near[2]["cosine"]
        emb = tiny_backbone.embedding_matrix.detach()[want].float()
        assert token["norm"] == pytest.approx(float(emb.norm()), rel=1e-5)
        assert 0 <= token["norm_percentile"] <= 100
    norm = report["vocabulary"]["norm"]
    assert norm["p5"] <= norm["p50"] <= norm["p95"]
    acc = report["accuracy"]
    assert acc["rows"] == 12 and acc["nearest"] == acc["soft"]  # its tokens are exactly vocabulary tokens


def rigged_backbone(tmp_path):
    """A tiny decoder in which one token (' cat') is rigged to make the next token the 'positive' label's: with
    it last before the label, every row of an all-positive task scores best. Returns (backbone, task, token)."""
    from prompttune import Backbone

    bb = Backbone.load(str(make_decoder(tmp_path / "rigged")))
    task = PromptTask.create(bb, LABELS, "prompt-tuning", {"num_virtual_tokens": 1}, "{{ text }}[soft:1][label]")
    neg, pos = (task.model.form_token_ids[i][0] for i in range(2))
    key = bb.tokenize(" cat")[0]
    with torch.no_grad():
        bb.embedding_matrix[key] = 8 * (bb.embedding_matrix[pos] - bb.embedding_matrix[neg])
    return bb, task, key


def one_token_losses(task, vocab, rows) -> dict[int, float]:
    """Each candidate token's loss on ``rows`` as the task's one soft token."""
    encoded, gold = task.model.encode(rows), task.model.label_indices(rows)

    def loss_of(token: int) -> float:
        task.model.method.load_table(vocab.embeddings(torch.tensor([token])))
        task.model.clear_cache()
        return float(torch.nn.functional.nll_loss(task.model.score(encoded, calibrate=False), gold))

    return {t: loss_of(t) for t in vocab.ids.tolist()}


def test_pez_lowers_the_loss_and_finds_the_token_that_solves_the_task(tmp_path):
    bb, task, key = rigged_backbone(tmp_path)
    texts = ["a great movie", "boring and bad", "I hated it", "what a waste", "the cat sat on the mat", "a joy"]
    rows = from_records([{"text": t, "label": "positive"} for t in texts * 3])
    vocab = Vocabulary.of(bb, "readable")
    losses = one_token_losses(task, vocab, rows)
    assert min(losses, key=losses.get) == key  # the rig works: ' cat' is the best single token
    worst = max(losses, key=losses.get)
    task.model.method.load_table(vocab.embeddings(torch.tensor([worst])))
    result = run_pez(task, vocab, rows, rows, PezConfig(steps=30, batch_size=6, eval_every=5))
    assert result.history[0]["loss"] == pytest.approx(losses[worst], rel=1e-5)
    assert result.selection_loss < losses[worst]
    assert result.ids == {0: [key]}
    assert result.selection_loss == pytest.approx(losses[key], rel=1e-5)


def test_pez_with_confirm_takes_only_jumps_the_next_batch_agrees_with(tmp_path, monkeypatch):
    import prompttune.readable.pez as pez

    bb, task, key = rigged_backbone(tmp_path)
    texts = ["a great movie", "boring and bad", "I hated it", "what a waste", "the cat sat on the mat", "a joy"]
    rows = from_records([{"text": t, "label": "positive"} for t in texts * 3])
    vocab = Vocabulary.of(bb, "readable")
    losses = one_token_losses(task, vocab, rows)
    worst = max(losses, key=losses.get)
    config = PezConfig(steps=30, batch_size=6, eval_every=5, confirm=True)
    task.model.method.load_table(vocab.embeddings(torch.tensor([worst])))
    result = run_pez(task, vocab, rows, rows, config)
    assert result.ids == {0: [key]}  # the jump to the token that solves the task is confirmed
    last = result.history[-1]
    assert 0 < last["jumps_taken"] <= last["jumps"]

    checked = []
    monkeypatch.setattr(pez, "confirmed", lambda *a: checked.append(a[3:5]) or False)  # every jump refused
    task.model.method.load_table(vocab.embeddings(torch.tensor([worst])))
    result = run_pez(task, vocab, rows, rows, config)
    assert checked and all(int(current) == worst for current, _ in checked)  # each jump checked against the start
    assert result.ids == {0: [worst]} and result.history[-1]["jumps_taken"] == 0


def test_harden_pez_cli_writes_a_template_that_scores_what_it_reports(tmp_path, tiny_model_dir, sentiment_file):
    from prompttune.api import evaluate

    out = tmp_path / "pez.yaml"
    args = ["harden", sentiment_file, "--method", "pez", "--tokens", "2", "--steps", "4", "--batch-size", "4"]
    result = invoke(
        *args, "--eval-every", "2", "--val", sentiment_file, "--out", out, "--model", tiny_model_dir, "--json"
    )
    assert result.exit_code == 0, result.output
    report = last_json(result.stdout)
    assert report["method"] == "pez" and report["tokens"] == 2 + 4  # [soft] -> 2, the answer's [soft:4]
    assert report["pez"]["steps"] == 4 and [h["step"] for h in report["pez"]["history"]] == [0, 2, 4]
    assert report["accuracy"]["soft"] is None and report["accuracy"]["rows"] == len(load_rows(sentiment_file))
    text = out.read_text()
    assert text.startswith("# prompttune harden:") and "--no-calibrate" in text
    template = Template.from_spec(str(out))
    assert (
        "[soft" not in template.user + template.answer
        and f"{report['accuracy']['hardened']:.4f}" in template.description
    )
    again = evaluate(str(out), sentiment_file, calibrate=False, model=str(tiny_model_dir))
    assert again["accuracy"] == pytest.approx(report["accuracy"]["hardened"])
    hand = evaluate("classify", sentiment_file, calibrate=False, model=str(tiny_model_dir))
    assert hand["accuracy"] == pytest.approx(report["accuracy"]["hand_written"])
    # the start (step 0) written into the same template scores what the report says it does
    start = Template.from_spec("classify")
    start = replace(start, user=report["start_text"]["0"] + "{{ text }}", answer=report["start_text"]["1"])
    (tmp_path / "start.yaml").write_text(yaml.safe_dump(start.to_dict()))
    begun = evaluate(tmp_path / "start.yaml", sentiment_file, calibrate=False, model=str(tiny_model_dir))
    assert begun["accuracy"] == pytest.approx(report["accuracy"]["start"])
    assert f"the search's start {report['accuracy']['start']:.4f}" in result.stdout


def test_harden_pez_can_start_from_given_words(tmp_path, tiny_backbone, sentiment_file):
    report = harden(
        sentiment_file, tmp_path / "t.yaml", method="pez", tokens=2, init="text", init_text=" bad movie",
        pez=PezConfig(steps=1, eval_every=1, lr=1e-9), backbone=tiny_backbone, vocab="words",
    )  # fmt: skip
    assert report["pez"]["best_step"] == 0 and report["pez"]["init"] == "text"
    assert report["text"] == {"0": " bad movie", "1": " bad movie bad movie"}  # cycled over both slots
    assert report["start_text"] == report["text"] and report["accuracy"]["start"] == report["accuracy"]["hardened"]


def test_harden_pez_from_an_artifact_starts_from_its_soft_prompt(
    tmp_path, tiny_backbone, word_artifact, sentiment_file
):
    path, ids = word_artifact
    report = harden(
        path, tmp_path / "p.yaml", method="pez", data=sentiment_file, pez=PezConfig(steps=2, eval_every=1),
        backbone=tiny_backbone, vocab="all",
    )  # fmt: skip
    assert report["pez"]["init"] == "soft" and report["pez"]["n_select"] == 4  # a seeded 10% of 40 rows
    history = report["pez"]["history"]
    start = harden(
        path, tmp_path / "s.yaml", method="nearest", data=sentiment_file, backbone=tiny_backbone, vocab="all"
    )
    assert len(history) == 3 and report["accuracy"]["soft"] is not None
    assert start["token_ids"] == {"0": ids[:3], "1": ids[3:]}  # what pez started from: the soft prompt's tokens


def test_inspect_and_harden_cli(tmp_path, tiny_model_dir, word_artifact, sentiment_file):
    path, _ = word_artifact
    result = invoke("inspect", path, "--top", "2", "--data", sentiment_file, "--limit", "6", "--model", tiny_model_dir)
    assert result.exit_code == 0, result.output
    assert "nearest tokens" in result.stdout and "accuracy on 6 rows" in result.stdout
    report = last_json(invoke("inspect", path, "--json", "--model", tiny_model_dir).stdout)
    assert report["accuracy"] is None and len(report["tokens"][0]["neighbours"]) == 5
    out = tmp_path / "n.yaml"
    result = invoke("harden", path, "--out", out, "--model", tiny_model_dir)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout
    assert out.exists()


# --- bad input --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["zero-shot", "prefix-tuning"])
def test_a_prompt_without_soft_tokens_is_refused(tmp_path, tiny_backbone, method):
    task = PromptTask.create(tiny_backbone, LABELS, method, {"num_virtual_tokens": 2}, "classify")
    path = task.save(tmp_path / method)
    with pytest.raises(ArtifactError, match="no input embeddings"):
        inspect_artifact(path, backbone=tiny_backbone)
    with pytest.raises(ArtifactError, match="no input embeddings"):
        harden(path, tmp_path / "x.yaml", backbone=tiny_backbone)
    with pytest.raises(ArtifactError, match="no input embeddings"):
        soft_tables(task, "here")


def test_bad_flags_are_named(run_main, tmp_path, tiny_model_dir, word_artifact, sentiment_file):  # noqa: F811
    path, _ = word_artifact
    common = ["--model", tiny_model_dir]
    cases = [
        (["harden", sentiment_file, "--method", "pez", "--tokens", "0", "--out", "a.yaml"], ["--tokens 0", "1-64"]),
        (["harden", sentiment_file, "--method", "pez", "--tokens", "65", "--out", "a.yaml"], ["--tokens 65"]),
        (["harden", sentiment_file, "--method", "pez", "--steps", "0", "--out", "a.yaml"], ["--steps 0"]),
        (["harden", sentiment_file, "--method", "pez", "--lr", "0", "--out", "a.yaml"], ["--lr 0"]),
        (["harden", sentiment_file, "--method", "gcg", "--confirm", "--out", "a.yaml"], ["--confirm", "pez"]),
        (["harden", sentiment_file, "--method", "nearest", "--out", "a.yaml"], ["give an ARTIFACT"]),
        (["harden", path, "--method", "pez", "--out", "a.yaml"], ["--data FILE"]),
        (["harden", path, "--method", "pez", "--data", sentiment_file, "--tokens", "2", "--out", "a.yaml"], ["--init"]),
        (["harden", path, "--method", "magic", "--out", "a.yaml"], ["--method magic"]),
        (["harden", sentiment_file, "--method", "pez", "--init", "text", "--out", "a.yaml"], ["--init-text"]),
        (["harden", path, "--vocab", "greek", "--out", "a.yaml"], ["--vocab greek"]),
        (["harden", path, "--out", "a.txt"], ["--out a.txt", ".yaml"]),
        (["harden", "nowhere", "--out", "a.yaml"], ["nowhere"]),
        (["inspect", path, "--top", "0"], ["--top 0"]),
        (["inspect", path, "--limit", "0", "--data", sentiment_file], ["--limit 0"]),
    ]
    for args, needles in cases:
        assert_user_error(run_main(*args, *common), *needles)
    assert not (tmp_path / "a.yaml").exists()


def test_an_existing_file_is_never_overwritten_unless_it_is_ours(tmp_path, tiny_backbone, word_artifact):
    path, _ = word_artifact
    mine = tmp_path / "notes.yaml"
    mine.write_text("user: my own careful prompt {{ text }}\n")
    with pytest.raises(PromptTuneError, match="not written by prompttune harden"):
        harden(path, mine, backbone=tiny_backbone)
    assert mine.read_text() == "user: my own careful prompt {{ text }}\n"
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    with pytest.raises(PromptTuneError, match="is a folder"):
        harden(path, folder, backbone=tiny_backbone)
    out = tmp_path / "ours.yaml"
    harden(path, out, backbone=tiny_backbone)
    with pytest.raises(PromptTuneError, match="--overwrite"):
        harden(path, out, backbone=tiny_backbone)
    first = Template.from_spec(str(out))
    harden(path, out, backbone=tiny_backbone, overwrite=True)
    assert Template.from_spec(str(out)) == first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_a_data_file_with_custom_rows_is_checked_before_the_model_loads(tmp_path, run_main):  # noqa: F811
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "no label here"}] * 6)
    run = run_main("harden", bad, "--method", "pez", "--out", "a.yaml", "--model", "/nonexistent-model")
    assert_user_error(run, "bad.jsonl, line 1", "label")
