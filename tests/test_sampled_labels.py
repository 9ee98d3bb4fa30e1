"""Many labels of several words: a training row scores its own label and a seeded sample of others, in one pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_cli import assert_user_error, rows, run_main  # noqa: F401, F811 (run_main: a fixture)
from test_scoring_bounds import LATE, MANY, ROWS, many_label_task, record_runs

from prompttune.core.data import from_records
from prompttune.label_words import label_forms
from prompttune.label_words.sampled_labels import LabelSampler
from prompttune.train import TrainConfig, Trainer

LATE_MANY = dict(LATE, answer="[soft:2]")
CHUNK = 24  # later label tokens in a chunk, here: MANY's ~120 are several chunks, so its labels are sampled


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(label_forms, "CONTINUATION_CHUNK", CHUNK)


def labelled(n: int = 8):
    texts = [r.fields["text"] for r in ROWS.rows]
    return from_records([{"text": texts[i % len(texts)], "label": MANY[(7 * i) % len(MANY)]} for i in range(n)])


@pytest.mark.parametrize("template", [None, LATE_MANY], ids=["early", "late"])
def test_sampled_scores_are_every_labels_scores_at_the_sampled_labels(tiny_backbone, template):
    pm = many_label_task(tiny_backbone, template).model
    assert LabelSampler.applies(pm)
    sampler = LabelSampler(pm, 6, seed=0)
    enc = pm.encode(ROWS)
    gold = [3, 17, 0, 39]
    sets = sampler.sets([0, 1, 2, 3], gold)
    sampled = sampler.scores(enc.ids, pm.prefix_kv(), sets)
    (sampled[:, 0].sum() - sampled[:, 1:].logsumexp(-1).sum()).backward()
    assert pm.method.embeddings.grad.abs().sum() > 0
    with torch.no_grad():
        full = pm.label_scores(enc.ids, pm.prefix_kv())
    for r, labels in enumerate(sets):
        torch.testing.assert_close(sampled[r, : len(labels)].detach(), full[r, labels], atol=1e-5, rtol=1e-5)


def test_a_sample_puts_the_rows_label_first_fits_one_pass_and_depends_on_seed_step_and_row(tiny_backbone):
    pm = many_label_task(tiny_backbone).model
    sampler = LabelSampler(pm, 6, seed=0)
    gold = [3, 17, 0, 39]
    whole = sampler.sets([10, 11, 12, 13], gold)
    for labels, g in zip(whole, gold, strict=True):
        assert labels[0] == g and len(set(labels)) == len(labels) and 2 <= len(labels) <= 6
        assert sum(sampler.steps[li] for li in labels) <= CHUNK
    # a row's sample does not depend on the rows beside it: two processes' halves of a batch draw the same
    assert sampler.sets([10, 11], gold[:2]) + sampler.sets([12, 13], gold[2:]) == whole
    sampler.step = 1
    assert sampler.sets([10, 11, 12, 13], gold) != whole
    assert LabelSampler(pm, 6, seed=1).sets([10, 11, 12, 13], gold) != whole


def test_a_sampled_step_runs_the_rows_and_their_sampled_words_in_one_pass(tiny_backbone, monkeypatch):
    task = many_label_task(tiny_backbone)
    data = labelled()
    objective = task.objective(data, data, TrainConfig(lr=0.1))
    assert objective.sampler is not None
    calls = record_runs(monkeypatch, tiny_backbone)
    loss = objective.batch_loss([0, 1, 2, 3])
    loss.backward()
    assert torch.isfinite(loss) and task.model.method.embeddings.grad.abs().sum() > 0
    widest = max(len(objective.train.ids[i]) for i in range(4))
    row_passes = [length for batch, length, *_ in calls if batch == 4]
    assert len(row_passes) == 1  # after the prefix, one pass: no pass of label words over every row
    assert widest < row_passes[0] <= widest + CHUNK
    # every label, every step (--sampled-labels 0): a pass of the label words' chunk(s) more
    full = task.objective(data, data, TrainConfig(lr=0.1, sampled_labels=0))
    assert full.sampler is None
    calls.clear()
    full.batch_loss([0, 1, 2, 3])
    assert len([c for c in calls if c[0] == 4]) == 1 + len(task.model._cont_chunks)


def test_sampling_applies_only_where_the_label_words_are_several_chunks(tiny_backbone, monkeypatch):
    from prompttune.api import PromptTask

    monkeypatch.setattr(label_forms, "CONTINUATION_CHUNK", 256)
    one_chunk = PromptTask.create(tiny_backbone, MANY[:15], "prompt-tuning", {"num_virtual_tokens": 2}).model
    # too many later tokens for the rows' own pass, but one chunk: every label, every step (exact)
    assert one_chunk._inline_chunk() is None and len(one_chunk._cont_chunks) == 1
    assert not LabelSampler.applies(one_chunk)

    few = PromptTask.create(tiny_backbone, ["not_entailment", "entailment"], "prompt-tuning", {"num_virtual_tokens": 2})
    assert not LabelSampler.applies(few.model)
    data = from_records([{"text": "a", "label": "entailment"}, {"text": "b", "label": "not_entailment"}])
    assert few.objective(data, data, TrainConfig(lr=0.1)).sampler is None


def test_fit_on_many_labels_trains_with_samples_and_validates_on_every_label(tiny_backbone):
    task = many_label_task(tiny_backbone)
    data = labelled(16)
    before = task.model.method.embeddings.detach().clone()
    objective = task.objective(data, data, TrainConfig(lr=0.1))
    # micro-batches count each row's label words with its tokens
    assert objective.lengths == [len(x) + CHUNK for x in objective.train.ids]
    result = Trainer(objective, TrainConfig(lr=0.1, max_steps=3, batch_size=4, eval_every=3, warmup_steps=0)).fit()
    assert not torch.equal(task.model.method.embeddings.detach(), before)
    assert result.steps == 3 and result.history
    # validation reads every label out of all 40
    with torch.no_grad():
        scores = task.model.score(task.model.encode(data), calibrate=False)
    assert scores.shape == (16, len(MANY))
    expected = float((scores.argmax(-1) == objective.y_val).float().mean())
    assert objective.validate() == pytest.approx(expected)


def test_sampled_loss_is_a_cross_entropy_over_the_sample(tiny_backbone):
    pm = many_label_task(tiny_backbone).model
    sampler = LabelSampler(pm, 4, seed=0)
    enc = pm.encode(ROWS)
    sets = sampler.sets([0, 1, 2, 3], [1, 2, 3, 4])
    from prompttune.label_words.sampled_labels import sampled_loss

    loss = sampled_loss(sampler, enc.ids, [0, 1, 2, 3], [1, 2, 3, 4])
    with torch.no_grad():
        full = pm.label_scores(enc.ids, pm.prefix_kv())
        expected = torch.stack([-F.log_softmax(full[r, s], -1)[0] for r, s in enumerate(sets)]).mean()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)


def test_sampled_labels_flag_is_checked(run_main, tmp_path):  # noqa: F811
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n')
    assert_user_error(run_main("train", path, "--out", tmp_path / "o", "--sampled-labels", 1), "--sampled-labels 1")


def test_two_ranks_sampling_their_halves_sum_to_one_process_gradient(tiny_backbone):
    """Each row's sample depends on the seed, the step and the row only: two data-parallel ranks, each with its
    part of the batch, add up to one process's gradient."""
    from test_distributed_step import one_process_and_two_ranks

    task = many_label_task(tiny_backbone)
    data = labelled(8)
    obj = task.objective(data, data, TrainConfig(lr=0.1))
    obj.begin_step(7)
    full, whole, summed = one_process_and_two_ranks(obj, list(range(8)), 7)
    torch.testing.assert_close(summed[:-1], full, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(summed[-1], whole.float(), atol=1e-6, rtol=1e-5)
