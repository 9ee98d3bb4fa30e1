"""harden --method gcg (greedy coordinate gradient, readable/gcg.py) and what the token searches share
(readable/discrete.py). Tiny random models; made-up tasks."""

from __future__ import annotations

import re

import pytest
import torch
from test_cli import assert_user_error, invoke, last_json, run_main  # noqa: F401, F811 (run_main: a fixture)
from test_readable import one_token_losses, rigged_backbone

from prompttune.core.data import from_records
from prompttune.core.errors import PromptTuneError
from prompttune.core.template import Template
from prompttune.readable import GcgConfig, PezConfig, harden, search_config
from prompttune.readable.discrete import Selection
from prompttune.readable.gcg import confirmed, draw_swaps, ranked_swaps, run_gcg
from prompttune.readable.vocab import Vocabulary
from prompttune.train import TrainConfig

TEXTS = ["a great movie", "boring and bad", "I hated it", "what a waste", "the cat sat on the mat", "a joy"]


@pytest.fixture
def rigged(tmp_path):
    """The rigged task (test_readable.rigged_backbone), all-positive rows, its vocabulary, each token's loss."""
    bb, task, key = rigged_backbone(tmp_path)
    rows = from_records([{"text": t, "label": "positive"} for t in TEXTS * 3])
    vocab = Vocabulary.of(bb, "readable")
    losses = one_token_losses(task, vocab, rows)
    return task, key, rows, vocab, losses, max(losses, key=losses.get)


def test_gcg_finds_the_token_that_solves_the_task_from_the_worst_start(rigged):
    task, key, rows, vocab, losses, worst = rigged
    task.model.method.load_table(vocab.embeddings(torch.tensor([worst])))
    result = run_gcg(task, vocab, rows, rows, GcgConfig(steps=6, top_k=8, candidates=8, batch_size=6, eval_every=1))
    assert result.history[0]["loss"] == pytest.approx(losses[worst], rel=1e-5)
    assert result.ids == {0: [key]} and result.lr is None
    assert result.selection_loss == pytest.approx(losses[key], rel=1e-5)
    losses_seen = [h["loss"] for h in result.history]
    assert all(b <= a + 1e-6 for a, b in zip(losses_seen, losses_seen[1:], strict=False))  # swaps only if better
    # the task ends holding the best tokens
    assert torch.equal(task.model.method.table().detach().float(), vocab.embeddings(torch.tensor([key])))


def test_a_swap_is_confirmed_only_where_it_lowers_the_loss_on_other_rows(rigged):
    task, key, rows, vocab, _, worst = rigged
    objective = task.objective(rows, rows, TrainConfig())
    good, bad = torch.tensor([key]), torch.tensor([worst])
    assert confirmed(task, vocab, objective, bad, good, list(range(6)))
    assert not confirmed(task, vocab, objective, good, bad, list(range(6)))
    assert not confirmed(task, vocab, objective, good, good, list(range(6)))  # no gain is not a gain


def test_gradient_ranks_the_rigged_token_first_and_swaps_are_single_distinct_changes(tmp_path):
    bb, task, key = rigged_backbone(tmp_path)
    vocab = Vocabulary.of(bb, "readable")
    grad = 8 * (vocab.embeddings(torch.tensor([key])) - 0)  # any gradient: the ranking is by e_v . grad, smallest
    top = ranked_swaps(-grad, vocab, 3)
    assert top.shape == (1, 3) and int(top[0, 0]) == key  # -grad points at ' cat': its embedding lowers the loss most
    current = torch.tensor([int(vocab.ids[0]), int(vocab.ids[1]), int(vocab.ids[2])])
    table = torch.stack([vocab.ids[:5]] * 3)  # every position's top-5 includes its own token
    swaps = draw_swaps(current, table, 40, torch.Generator().manual_seed(0))
    assert swaps and len({tuple(s.tolist()) for s in swaps}) == len(swaps)
    for s in swaps:
        changed = (s != current).nonzero().flatten().tolist()
        assert len(changed) == 1 and int(s[changed[0]]) in vocab.ids[:5].tolist()


def test_selection_scores_a_token_set_once(tmp_path):
    _, task, _ = rigged_backbone(tmp_path)
    rows = from_records([{"text": t, "label": "positive"} for t in TEXTS])
    selection = Selection(task, task.objective(rows, rows, TrainConfig()), 3)
    calls = []
    real = selection.score
    selection.score = lambda: calls.append(1) or real()
    ids = torch.tensor([5])
    selection.consider(0, ids)
    selection.consider(1, ids)
    selection.consider(2, torch.tensor([6]))
    assert len(calls) == 2 and [h["step"] for h in selection.history] == [0, 1, 2]
    assert selection.history[0]["loss"] == selection.history[1]["loss"]


def test_harden_gcg_cli_writes_a_template_that_scores_what_it_reports(tmp_path, tiny_model_dir, sentiment_file):
    from prompttune.api import evaluate

    out = tmp_path / "gcg.yaml"
    args = ["harden", sentiment_file, "--method", "gcg", "--tokens", "2", "--steps", "3", "--batch-size", "4"]
    result = invoke(*args, "--top-k", "4", "--candidates", "3", "--out", out, "--model", tiny_model_dir, "--json")
    assert result.exit_code == 0, result.output
    report = last_json(result.stdout)
    assert report["method"] == "gcg" and report["pez"] is None and report["tokens"] == 2 + 4
    g = report["gcg"]
    assert (g["steps"], g["top_k"], g["candidates"], g["eval_every"], g["lr"]) == (3, 4, 3, 5, None)
    assert [h["step"] for h in g["history"]] == [0, 3]  # the start, then the last step
    assert "gcg: 3 steps, batch 4" in out.read_text()
    template = Template.from_spec(str(out))
    assert "[soft" not in template.user + template.answer
    again = evaluate(str(out), sentiment_file, calibrate=False, model=str(tiny_model_dir))
    assert report["accuracy"]["rows"] and report["accuracy"]["hardened"] is not None
    rows_source = report["accuracy"]["rows_source"]
    assert "seeded 10%" in rows_source and 0 <= again["accuracy"] <= 1


@pytest.mark.parametrize(
    ("method", "flags", "message"),
    [
        ("gcg", {"lr": 0.1}, "--lr: applies to --method pez, not gcg"),
        ("pez", {"top_k": 4}, "--top-k: applies to --method gcg, not pez"),
        ("pez", {"candidates": 4}, "--candidates: applies to --method gcg, not pez"),
        ("gcg", {"top_k": 0}, "--top-k 0: must be 1-4,096"),
        ("gcg", {"candidates": 513}, "--candidates 513: must be 1-512"),
        ("gcg", {"steps": 0}, "--steps 0: must be 1-10,000"),
        ("nearest", {"steps": 50}, "--steps: applies to a search (--method pez or gcg), not nearest"),
        ("nearest", {"top_k": 4}, "--top-k: applies to a search (--method pez or gcg), not nearest"),
    ],
)
def test_search_flags_are_checked_and_name_the_flag(method, flags, message):
    with pytest.raises(PromptTuneError, match=re.escape(message)):
        search_config(method, **flags)


def test_search_config_defaults_and_wrong_settings_type(tmp_path, sentiment_file):
    assert search_config("nearest", steps=None) is None
    assert search_config("gcg") == GcgConfig() and search_config("pez", steps=7) == PezConfig(steps=7)
    with pytest.raises(PromptTuneError, match="GcgConfig"):
        harden(sentiment_file, tmp_path / "x.yaml", method="gcg", search=PezConfig())


def test_harden_cli_gcg_flag_errors(tmp_path, run_main, sentiment_file):  # noqa: F811
    for flags, message in (
        (["--method", "gcg", "--lr", "0.1"], "--lr: applies to --method pez, not gcg"),
        (["--method", "pez", "--candidates", "3"], "--candidates: applies to --method gcg, not pez"),
        (["--method", "gcg", "--top-k", "0"], "--top-k 0: must be 1-4,096"),
    ):
        run = run_main("harden", sentiment_file, *flags, "--out", "x.yaml", "--model", "/nonexistent-model")
        assert_user_error(run, message)  # before any model loads
        assert not (tmp_path / "x.yaml").exists()


def test_no_swap_is_taken_that_the_next_batch_does_not_confirm(rigged, monkeypatch):
    import prompttune.readable.gcg as gcg

    task, _, rows, vocab, losses, worst = rigged
    asked = []
    monkeypatch.setattr(gcg, "confirmed", lambda *a: asked.append(a[-1]) or False)
    task.model.method.load_table(vocab.embeddings(torch.tensor([worst])))
    result = run_gcg(task, vocab, rows, rows, GcgConfig(steps=3, top_k=8, candidates=8, batch_size=6, eval_every=1))
    assert asked and all(len(batch) == 6 for batch in asked)  # a better swap was found and put to a fresh batch
    assert result.ids == {0: [worst]} and result.history[-1]["swaps_accepted"] == 0
