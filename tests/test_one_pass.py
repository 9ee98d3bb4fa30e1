"""A training step's prefix in the rows' own pass (``core.one_pass``): the same scores and gradients as the
prefix's pass followed by the rows' pass over its keys/values."""

from __future__ import annotations

import torch
from conftest import write_jsonl

import prompttune.label_words.one_pass_scores as one_pass_scores
import prompttune.label_words.verbalizer_objective as vo
from prompttune.api import PromptTask
from prompttune.core.data import from_records, load_rows
from prompttune.label_words.one_pass_scores import one_pass_label_scores
from prompttune.train import TrainConfig

TEXTS = ["a great movie", "a terrible film , boring and bad , what a waste", "fun", "I loved it , I hated it"]
CLASSIFY = {"system": "Classify the text.", "user": "[soft]{{ text }}", "answer": "[soft:2]"}


def make(backbone, template=CLASSIFY, method="prompt-tuning", tokens=5, labels=("no", "yes"), **kw):
    config = {"num_virtual_tokens": tokens, "init": "random", **kw}
    return PromptTask.create(backbone, list(labels), method, config, template, seed=3).model


def grads(pm) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in pm.method.parameters() if p.grad is not None]
    pm.method.zero_grad(set_to_none=True)
    return out


def check_equal(pm, texts=TEXTS):
    rows = pm.encode(from_records(texts)).ids
    one = one_pass_label_scores(pm, rows)
    assert one is not None
    (one * torch.arange(1.0, one.numel() + 1).view_as(one)).sum().backward()
    g_one = grads(pm)
    two = pm.label_scores(rows, pm.prefix_kv())
    (two * torch.arange(1.0, two.numel() + 1).view_as(two)).sum().backward()
    g_two = grads(pm)
    torch.testing.assert_close(one, two, atol=1e-5, rtol=1e-5)
    assert g_one and len(g_one) == len(g_two) and any(a.abs().sum() > 0 for a in g_one)
    for a, b in zip(g_one, g_two, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_scores_and_gradients_equal_two_passes(tiny_backbone):
    pm = make(tiny_backbone)
    assert pm.max_form_len == 1
    check_equal(pm)


def test_prefix_longer_than_every_row(tiny_backbone, monkeypatch):
    pm = make(tiny_backbone, tokens=40)  # rows are padded on the left to the prefix's width
    rows = pm.encode(from_records(TEXTS)).ids
    width = max(len(x) for x in rows)
    assert width < 40
    extra = one_pass_scores.extra_tokens(40, width, len(rows))
    assert extra == len(rows) * (40 - width)
    monkeypatch.setattr(one_pass_scores, "MAX_EXTRA_TOKENS", extra - 1)  # padding costs more than a pass: two
    assert one_pass_label_scores(pm, rows) is None
    monkeypatch.setattr(one_pass_scores, "MAX_EXTRA_TOKENS", extra)
    check_equal(pm)


def test_extra_tokens_counts_the_padding():
    assert one_pass_scores.extra_tokens(16, 30, 8) == 14  # the prefix's sequence padded to the rows' width
    assert one_pass_scores.extra_tokens(64, 24, 8) == 8 * 40  # every row padded to the prefix's length
    assert one_pass_scores.extra_tokens(16, 16, 8) == 0


def test_no_constant_lead_and_text_after_the_soft_tokens(tiny_backbone):
    template = {"user": "[soft] Review: {{ text }}", "chat": False}
    check_equal(make(tiny_backbone, template))


def test_p_tuning_encoder_gets_the_same_gradients(tiny_backbone):
    check_equal(make(tiny_backbone, method="p-tuning"))


def test_one_row(tiny_backbone):
    check_equal(make(tiny_backbone), TEXTS[:1])


def test_falls_back_where_one_pass_does_not_apply(tiny_backbone):
    rows = make(tiny_backbone).encode(from_records(TEXTS)).ids
    assert one_pass_label_scores(make(tiny_backbone, method="prefix-tuning"), rows) is None  # its own keys/values
    several = make(tiny_backbone, labels=("negative", "positive"))
    assert several.max_form_len > 1 and one_pass_label_scores(several, rows) is None  # words continue the row
    pm = make(tiny_backbone)
    with torch.no_grad():
        assert one_pass_label_scores(pm, rows) is None
    with pm.prefix_once():  # a step in parts shares one prefix pass
        assert one_pass_label_scores(pm, rows) is None


def test_training_steps_take_one_pass(tiny_backbone, monkeypatch):
    pm = make(tiny_backbone)
    data = from_records([{"text": t, "label": ["yes", "no"][i % 2]} for i, t in enumerate(TEXTS * 2)])
    objective = vo.VerbalizerObjective(pm, data, data)
    calls = []
    real = vo.one_pass_label_scores
    monkeypatch.setattr(vo, "one_pass_label_scores", lambda *a: calls.append(1) or real(*a))
    loss = objective.batch_loss([0, 1, 2])
    loss.backward()
    assert calls and torch.isfinite(loss)
    assert all(p.grad is not None for p in pm.method.parameters() if p.requires_grad)


def test_training_equals_two_passes(tiny_backbone, sentiment_rows, tmp_path, monkeypatch):
    """A few steps of ``fit`` train the same prompt with one pass a step as with two."""
    yes_no = [{**r, "label": "yes" if r["label"] == "positive" else "no"} for r in sentiment_rows]
    data = write_jsonl(tmp_path / "train.jsonl", yes_no)
    config = TrainConfig(lr=0.01, max_steps=4, eval_every=2, batch_size=4, time_budget_s=None)

    def trained() -> torch.Tensor:
        task = PromptTask.for_data(tiny_backbone, load_rows(data), seed=0)
        task.fit(data, config=config)
        return task.model.method.embeddings.detach().clone()

    one = trained()
    monkeypatch.setattr(vo, "one_pass_label_scores", lambda *a: None)
    two = trained()
    assert not torch.equal(one, make(tiny_backbone).method.embeddings.detach())
    torch.testing.assert_close(one, two, atol=1e-5, rtol=1e-4)


def test_attention_without_a_mask_is_causal():
    """transformers may pass no mask (nothing padded): the layer then builds the causal one itself."""
    from prompttune.core import one_pass
    from prompttune.core.attention import attend

    torch.manual_seed(0)
    lead, w, p, b = 3, 4, 4, 2
    q = torch.randn(1 + b, 4, w, 8)
    k, v = torch.randn(1 + b, 2, lead + w, 8), torch.randn(1 + b, 2, lead + w, 8)
    layout = one_pass.Layout(lead, w, p)
    kw = {"scaling": None, "dropout": 0.0, "training": False}
    causal = one_pass._causal(lead, w, q.dtype, q.device).expand(1 + b, 1, w, lead + w)
    given, _ = one_pass.attention(attend, q, k, v, causal, layout, **kw)
    built, _ = one_pass.attention(attend, q, k, v, None, layout, **kw)
    torch.testing.assert_close(given, built)
    # a row's last query sees the lead, the prefix's keys and its own: the prefix's first query only the lead
    # and itself, so changing a row's keys leaves sequence 0 alone
    k2 = k.clone()
    k2[1:] += 1
    moved, _ = one_pass.attention(attend, q, k2, v, None, layout, **kw)
    torch.testing.assert_close(moved[:1], built[:1])
    assert not torch.allclose(moved[1:], built[1:])
