"""A mixed batch of a pack runs as one forward pass (``multitask.joint``): the same scores and gradients as each
task's rows scored alone over its own prefix."""

from __future__ import annotations

import pytest
import torch
from multitask_data import write_tasks

from prompttune.multitask.joint import joint_label_scores
from prompttune.multitask.mixture import MixtureObjective
from prompttune.multitask.multi import build_tasks
from prompttune.multitask.specs import load_tasks
from prompttune.multitask.view import Stage, Strategy


def objective(tiny_backbone, tmp_path, method: str, form: str = "auto") -> tuple[MixtureObjective, Strategy]:
    files = write_tasks(tmp_path)
    data = load_tasks(list(files.items()), None, 0)
    strategy = Strategy.get(method, kinds=("mpt", "spot"))
    tasks = build_tasks(tiny_backbone, data, strategy, 4, "labels", 0, form)
    return MixtureObjective(tasks, data, Stage(strategy, strategy.keys()), 2.0, 0, "mixed"), strategy


def grads(strategy: Strategy) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in strategy.params.values() if p.grad is not None]
    for p in strategy.params.values():
        p.grad = None
    return out


@pytest.mark.parametrize(
    "method,first,joint_inline,alone_inline",
    [
        ("mpt", "several", True, False),
        ("spot", "several", True, True),
        ("mpt", "one", True, False),
        ("mpt", "one", False, False),
        ("mpt", "several", False, True),
    ],
)
def test_joint_scores_and_gradients_equal_each_task_alone(
    tiny_backbone, tmp_path, monkeypatch, method, first, joint_inline, alone_inline
):
    """``first``: whether the batch's first task has words of several tokens (the continuation pass then runs
    the first rows only) or of one (the tasks are put in that order for the pass, the scores back in theirs).
    ``*_inline``: the label words' tokens run in the rows' own pass (else a continuation pass after it)."""
    import prompttune.scorer as scorer

    obj, strategy = objective(tiny_backbone, tmp_path, method)
    prefixes = {id(t.model): t.model.prefix_kv()[0][0].shape[2] for t in obj.tasks}
    assert len(set(prefixes.values())) > 1  # the pair task's template is longer: prefixes of different widths
    several = [t.model.max_form_len > 1 for t in obj.tasks]
    assert several == [True, True, False]  # words of one token and of several
    order = [2, 0, 1] if first == "one" else [0, 1, 2]
    rows = {k: list(range(min(3, len(obj.parts[k].train.ids)))) for k in order}

    def groups():  # each pass its own prefixes (their graphs are freed by its backward)
        return [(obj.tasks[k].model, [obj.parts[k].train.ids[i] for i in r], obj.tasks[k].model.prefix_kv())
                for k, r in rows.items()]  # fmt: skip

    if not joint_inline:
        monkeypatch.setattr(scorer, "INLINE_TOKENS", 0)
    joint = joint_label_scores(groups())
    assert joint is not None
    sum(s.sum() for s in joint).backward()
    g_joint = grads(strategy)
    monkeypatch.setattr(scorer, "INLINE_TOKENS", 64 if alone_inline else 0)
    alone = [model.label_scores(ids, prefix) for model, ids, prefix in groups()]
    for j, a in zip(joint, alone, strict=True):
        assert j.shape == a.shape
        torch.testing.assert_close(j, a, atol=1e-4, rtol=1e-4)
    sum(s.sum() for s in alone).backward()
    g_alone = grads(strategy)
    assert g_joint and len(g_joint) == len(g_alone)
    for a, b in zip(g_joint, g_alone, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_mixed_batch_loss_takes_the_joint_path(tiny_backbone, tmp_path, monkeypatch):
    obj, strategy = objective(tiny_backbone, tmp_path, "mpt")
    batch = next(b for b in obj.epoch_batches(8, 0, 0) if len({obj.pairs[j][0] for j in b}) > 1)
    obj.batch_loss(batch)  # the prompts' constant text (its keys/values kept for later steps) runs once, first
    calls = []
    monkeypatch.setattr(type(tiny_backbone), "run", lambda self, *a, _run=type(tiny_backbone).run, **kw: calls.append(1)
                        or _run(self, *a, **kw))  # fmt: skip
    loss = obj.batch_loss(batch)
    runs_joint = len(calls)
    calls.clear()
    monkeypatch.setattr("prompttune.multitask.mixture.joint_label_scores", lambda groups: None)
    loss_alone = obj.batch_loss(batch)
    tasks_in_batch = len({obj.pairs[j][0] for j in batch})
    # joint: one pass for the rows (+ the prefixes, + continuations); alone: one more pass per extra task
    assert len(calls) == runs_joint + tasks_in_batch - 1
    torch.testing.assert_close(loss, loss_alone, atol=1e-5, rtol=1e-5)


def test_late_rows_keep_the_task_by_task_path(tiny_backbone, tmp_path):
    obj, _ = objective(tiny_backbone, tmp_path, "mpt", form="late")
    groups = [(t.model, p.train.ids[:2], t.model.prefix_kv()) for t, p in zip(obj.tasks, obj.parts, strict=True)]
    assert joint_label_scores(groups) is None  # their text runs without gradients, split off: cheaper alone
    obj.batch_loss(obj.epoch_batches(8, 0, 0)[0]).backward()  # and the mixed step still trains


def test_joint_prefixes_equal_each_task_alone(tiny_backbone, tmp_path, monkeypatch):
    from prompttune.multitask.joint import joint_prefixes

    obj, strategy = objective(tiny_backbone, tmp_path, "mpt")
    models = [t.model for t in obj.tasks]
    alone = [m.prefix_kv() for m in models]
    assert len({kv[0][0].shape[2] for kv in alone}) > 1  # prefixes of different lengths, padded in the joint pass
    calls = []
    real = type(tiny_backbone).run
    monkeypatch.setattr(type(tiny_backbone), "run", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    together = joint_prefixes(models)
    assert len(calls) == 1  # one pass for every task's prefix
    for a, b in zip(together, alone, strict=True):
        assert len(a) == len(b)
        for (ka, va), (kb, vb) in zip(a, b, strict=True):
            assert ka.shape == kb.shape
            torch.testing.assert_close(ka, kb, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(va, vb, atol=1e-5, rtol=1e-4)
    sum(kv[-1][0].sum() + kv[-1][1].square().sum() for kv in together).backward()
    g_together = grads(strategy)
    sum(kv[-1][0].sum() + kv[-1][1].square().sum() for kv in alone).backward()
    for a, b in zip(g_together, grads(strategy), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_a_step_in_parts_computes_the_prefixes_once(tiny_backbone, tmp_path, monkeypatch):
    """Micro-batches read the step's prefixes (one joint pass); the gradient equals the whole batch's."""
    obj, strategy = objective(tiny_backbone, tmp_path, "mpt")
    batch = next(b for b in obj.epoch_batches(8, 0, 0) if len({obj.pairs[j][0] for j in b}) > 1)
    obj.batch_loss(batch).backward()
    whole = grads(strategy)
    half = len(batch) // 2
    with obj.prefix_once(batch):
        assert all(t.model.in_step for t in obj.tasks if any(obj.pairs[j][0] == obj.tasks.index(t) for j in batch))
        for part in (batch[:half], batch[half:]):
            (obj.batch_loss(part) * len(part) / len(batch)).backward()
    assert not any(t.model.in_step for t in obj.tasks)
    for a, b in zip(whole, grads(strategy), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_label_words_in_several_chunks_continue_task_by_task(tiny_backbone, tmp_path, monkeypatch):
    # every later token a chunk of its own
    monkeypatch.setattr("prompttune.label_words.label_forms.CONTINUATION_CHUNK", 1)
    obj, _ = objective(tiny_backbone, tmp_path, "mpt")
    assert any(len(t.model._cont_chunks) > 1 for t in obj.tasks)
    groups = [(t.model, p.train.ids[:3], t.model.prefix_kv()) for t, p in zip(obj.tasks, obj.parts, strict=True)]
    with torch.no_grad():
        joint = joint_label_scores(groups)
        for (model, ids, prefix), j in zip(groups, joint, strict=True):
            torch.testing.assert_close(j, model.label_scores(ids, prefix), atol=1e-4, rtol=1e-4)
