"""The fast path gives the same scores as the plain one (PEFT's way: one pass over the whole sequence)."""

import pytest
import torch
import torch.nn.functional as F
from reference import reference_scores

from prompttune.api import PromptTask
from prompttune.core.data import from_records

LABELS = ["not_entailment", "entailment", "maybe so"]  # several multi-token label words


@pytest.fixture
def task(tiny_backbone):
    return PromptTask.create(
        tiny_backbone,
        LABELS,
        "prompt-tuning",
        {"num_virtual_tokens": 5, "init": "random"},
        {"system": "Classify.", "user": "[soft]{{ text }}"},  # soft tokens in the cached prefix only
        verbalizer="entailment=entailment|yes;maybe so=maybe so",
        seed=3,
    )


ROWS = from_records(
    ["a great movie", "a terrible film , boring and bad , what a waste", "the cat", "I loved it , I hated it , truly"]
)


def test_labels_span_several_tokens(task):
    assert task.model.max_form_len > 1


@torch.no_grad()
def test_cached_batched_scores_equal_uncached_single_pass(task):
    pm = task.model
    fast = pm.score(pm.encode(ROWS), batch_size=3, calibrate=False)
    ref = reference_scores(pm, ROWS.rows)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_scores_do_not_depend_on_batching(task):
    pm = task.model
    enc = pm.encode(ROWS)
    together = pm.score(enc, batch_size=4, calibrate=False)
    alone = pm.score(enc, batch_size=1, calibrate=False)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_training_path_matches_inference_path(task):
    """label_scores over a freshly computed (gradient-carrying) prefix equals the cached inference scores."""
    pm = task.model
    enc = pm.encode(ROWS)
    train_scores = F.log_softmax(pm.label_scores(enc.ids, pm.prefix_kv()), -1)
    assert train_scores.requires_grad
    torch.testing.assert_close(
        train_scores.detach(), pm.score(enc, batch_size=2, calibrate=False), atol=1e-5, rtol=1e-5
    )


def test_prefix_is_computed_once_for_inference(task, monkeypatch):
    pm = task.model
    pm.clear_cache()
    calls = []
    original = pm.method.prefix_kv
    monkeypatch.setattr(pm.method, "prefix_kv", lambda *a: calls.append(1) or original(*a))
    enc = pm.encode(ROWS)
    pm.score(enc, batch_size=1)
    pm.score(enc, batch_size=2)
    assert len(calls) == 1


def test_only_label_rows_of_lm_head_are_read(task, monkeypatch):
    """The read-out never multiplies by the full vocabulary."""
    pm = task.model
    head = pm.backbone.model.get_output_embeddings()
    monkeypatch.setattr(head, "forward", lambda *a, **k: pytest.fail("full LM head used for scoring"))
    pm.score(pm.encode(ROWS), calibrate=False)


def test_calibration_centres_content_free_inputs(task):
    cal = task.calibrate()
    assert len(cal) == len(LABELS)
    from prompttune.core.data import Row

    rows = [Row({"text": t}) for t in ("N/A", "", "[MASK]")]
    probs = task.model.score(task.model.encode(rows), calibrate=True).exp().mean(0)
    uncal = task.model.score(task.model.encode(rows), calibrate=False).exp().mean(0)
    uniform = torch.full_like(probs, 1 / len(LABELS))
    assert (probs - uniform).abs().max() < (uncal - uniform).abs().max() + 1e-6


ROW_SOFT = {"system": "Classify.", "user": "[soft:2]{{ text }}", "answer": "[soft:3]"}


@pytest.fixture
def row_soft_task(tiny_backbone):
    return PromptTask.create(
        tiny_backbone,
        LABELS,
        "prompt-tuning",
        {"num_virtual_tokens": 2, "init": "random"},
        ROW_SOFT,
        verbalizer="entailment=entailment|yes;maybe so=maybe so",
        seed=4,
    )


@torch.no_grad()
def test_soft_tokens_in_the_row_score_like_a_single_pass(row_soft_task):
    pm = row_soft_task.model
    assert pm.method.embeddings.shape[0] == 5  # 2 in the prefix + 3 next to the answer
    fast = pm.score(pm.encode(ROWS), batch_size=3, calibrate=False)
    torch.testing.assert_close(fast, reference_scores(pm, ROWS.rows), atol=1e-5, rtol=1e-5)


def test_soft_tokens_in_the_row_get_gradients(row_soft_task):
    pm = row_soft_task.model
    enc = pm.encode(ROWS)
    pm.label_scores(enc.ids, pm.prefix_kv()).sum().backward()
    grad = pm.method.embeddings.grad
    assert grad[:2].abs().sum() > 0 and grad[2:].abs().sum() > 0


def test_label_words_run_in_the_rows_pass_with_the_same_scores_and_gradients(task, monkeypatch):
    """One backbone pass a batch (the words' tokens after the rows), equal to the row pass + continuation pass."""
    import prompttune.scorer as scorer

    pm = task.model
    enc = pm.encode(ROWS)
    calls = []
    original = pm.backbone.run
    monkeypatch.setattr(pm.backbone, "run", lambda *a, **k: calls.append(1) or original(*a, **k))

    def scores_and_grads():
        pm.method.zero_grad()
        s = pm.label_scores(enc.ids, pm.prefix_kv())
        (s * torch.linspace(-1, 1, s.numel()).view_as(s)).sum().backward()
        return s.detach(), [p.grad.clone() for p in pm.method.parameters()]

    scores_and_grads()  # the template's constant lead is computed once and kept: not counted below
    calls.clear()
    inline, g_inline = scores_and_grads()
    passes = len(calls)
    monkeypatch.setattr(scorer, "INLINE_TOKENS", 0)
    calls.clear()
    two, g_two = scores_and_grads()
    assert len(calls) == passes + 1  # the same prefix passes; the words' continuation pass is gone
    torch.testing.assert_close(inline, two, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_inline, g_two, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
