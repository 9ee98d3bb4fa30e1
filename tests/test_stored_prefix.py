"""Cached prefixes as stored between batches (core/lead_kv.py): the hard text before the soft tokens is held once
per backbone and shared by every task that starts with it; the rest can be kept in bfloat16 or int8."""

from __future__ import annotations

import pytest
import torch

from prompttune.core.errors import DataError
from prompttune.core.lead_kv import StoredPrefix
from prompttune.prompt_task import PromptTask
from prompttune.serve import ServeConfig
from prompttune.serve.prefix_cache import held_bytes
from prompttune.serve.tasks import TaskTable

LABELS = ["negative", "positive"]
TEXTS = ["a great movie", "boring and bad", "I loved it", "what a waste"]


def task(backbone, method="prompt-tuning", seed=0, n=4):
    return PromptTask.create(backbone, LABELS, method, {"num_virtual_tokens": n}, "classify", seed=seed)


def same(a, b) -> bool:
    pairs = zip(a, b, strict=True) if len(a) == len(b) else ()
    return len(a) == len(b) and all(torch.equal(x, y) for p, q in pairs for x, y in zip(p, q, strict=True))


def test_tasks_that_start_with_the_same_text_share_its_keys_values(tiny_backbone):
    a, b = task(tiny_backbone), task(tiny_backbone)
    with torch.no_grad():
        b.model.method.embeddings += 0.5  # another trained prompt
    kv_a = a.model.cached_prefix()
    a.model.cached_prefix()
    b.model.cached_prefix()
    lead = a.model._cached_prefix.lead
    assert lead is not None and lead is b.model._cached_prefix.lead  # one copy of the system text for both
    assert 0 < len(lead) < kv_a[0][0].shape[2]
    with torch.no_grad():
        plain = a.model.prefix_kv()
    assert same(kv_a, plain)  # the stored form gives back exactly what was computed
    own = sum(k.numel() + v.numel() for k, v in plain) * 4 * 4 // kv_a[0][0].shape[2]  # 4 soft tokens, float32
    assert a.model.cached_prefix_bytes() == own  # the task pays for its own tokens only
    assert not same(kv_a, b.model.cached_prefix())  # their soft tokens differ


def test_prefix_tuning_claims_no_lead_and_keeps_its_prefix_whole(tiny_backbone):
    t = task(tiny_backbone, "prefix-tuning")
    kv = t.model.cached_prefix()
    assert t.model._cached_prefix.lead is None
    assert t.model.cached_prefix_bytes() == sum(k.numel() + v.numel() for k, v in kv) * 4


def test_a_lead_that_differs_from_the_prefix_start_is_not_used(tiny_backbone):
    t = task(tiny_backbone)
    full = [(k.clone(), v.clone()) for k, v in t.model.cached_prefix()]
    lead = t.model._cached_prefix.lead
    full[0][0][0, 0, 0, 0] += 1  # no longer what the lead holds
    stored = StoredPrefix(full, lead)
    assert stored.lead is None and same(stored.kv(), full)


@pytest.mark.parametrize(("dtype", "share", "tol"), [(torch.bfloat16, 0.5, 1e-2), (torch.int8, 0.4, 2e-2)])
def test_smaller_stores_keep_the_scores_close(tiny_backbone, dtype, share, tol):
    exact, small = task(tiny_backbone), task(tiny_backbone)
    small.model.prefix_store_dtype = dtype
    want, got = exact.predict(TEXTS), small.predict(TEXTS)
    assert small.model.cached_prefix()[0][0].dtype == torch.float32  # given back in the model's dtype
    assert small.model.cached_prefix_bytes() <= share * exact.model.cached_prefix_bytes()
    for w, g in zip(want, got, strict=True):
        assert max(abs(w.scores[k] - g.scores[k]) for k in LABELS) < tol


def test_int8_comes_back_in_a_bfloat16_models_dtype(tiny_model_dir):
    from prompttune import Backbone

    backbone = Backbone.load(str(tiny_model_dir), dtype="bfloat16")
    t = task(backbone)
    t.model.prefix_store_dtype = torch.int8
    assert all(k.dtype == v.dtype == torch.bfloat16 for k, v in t.model.cached_prefix())
    assert len(t.predict(TEXTS)) == len(TEXTS)


def test_the_server_keeps_prefixes_in_the_dtype_asked_for(tiny_model_dir):
    config = ServeConfig(model=str(tiny_model_dir), prefix_cache_dtype="int8")
    table = TaskTable(config.model, prefix_store_dtype=config.prefix_store_dtype)
    full = TaskTable(config.model)
    for t in (table, full):
        t.add("zs", "classify", LABELS)
    assert table.get("zs").task.model.prefix_store_dtype is torch.int8
    assert 0 < held_bytes(table.get("zs").prefix_owner) < held_bytes(full.get("zs").prefix_owner) / 2
    with pytest.raises(DataError, match="--prefix-cache-dtype fp8"):
        ServeConfig(prefix_cache_dtype="fp8")


def test_a_shared_lead_lives_only_while_a_task_holds_it(tiny_backbone):
    import gc

    template = "Zebra crossing notes: [soft]{{ text }} Answer: [label]"
    t = PromptTask.create(tiny_backbone, LABELS, "prompt-tuning", {"num_virtual_tokens": 2}, template)
    t.model.cached_prefix()
    ids = t.model._cached_prefix.lead.ids
    assert ids in tiny_backbone._leads
    del t
    gc.collect()
    assert ids not in tiny_backbone._leads  # freed with the last task that held it
