"""How a mixed batch attends to its tasks' prefixes (shared_prefix/: packed.py, cascade.py, flash.py): rows of
soft and hard tasks, interleaved, packed into one sequence, cut into calls per task or sharing a call between
tasks with short prefixes, score as each task alone (float32, 1e-5); the fused kernel's padded keys and masks
change nothing."""

from __future__ import annotations

import pytest
from test_serve import TEXTS, artifacts, table  # noqa: F401 - the module's fixtures

from prompttune.core.data import from_records


@pytest.mark.parametrize(("chunk", "shared"), [(None, None), (4, None), (None, 0), (None, 10_000)])
def test_mixed_scoring_unit(table, monkeypatch, chunk, shared):  # noqa: F811 - the imported fixture
    """score_mixed over shuffled rows of soft (prompt, prefix) and hard tasks equals each task's own scores, with
    each task's rows in one attention call or cut into chunks of a row or two, and tasks sharing calls or each
    in its own (shared_prefix/packed.py)."""
    import random

    import torch

    from prompttune.serve.mixed import score_mixed
    from prompttune.shared_prefix import packed

    if chunk:
        monkeypatch.setattr(packed, "CHUNK_TOKENS", chunk)
    if shared is not None:
        monkeypatch.setattr(packed, "SHARED_PREFIX_KEYS", shared)

    items, want = [], []
    for name in ("pt", "prefix", "zs", "nli"):
        task = table.get(name).task
        ds = from_records(TEXTS)
        for ids, p in zip(task.model.encode(ds).ids, task.predict(ds), strict=True):
            items.append((task.model, ids))
            want.append(torch.tensor([p.scores[label] for label in task.labels]).log())
    order = list(range(len(items)))
    random.Random(0).shuffle(order)
    got = score_mixed([items[i] for i in order])
    for g, i in zip(got, order, strict=True):
        assert torch.allclose(g, want[i], atol=1e-5)


def test_mixed_scoring_holds_each_prefix_once(table, monkeypatch):  # noqa: F811 - the imported fixture
    """Rows of tasks with prefixes of different lengths run through the cascade attention (each task's prefix
    held once, not laid out per row) and score as each task alone; the attention without groups is eager's."""
    import torch

    from prompttune.core import attention
    from prompttune.serve import mixed

    calls = []
    real = mixed.run_rows
    monkeypatch.setattr(mixed, "run_rows", lambda *a, **k: calls.append(len(a[4])) or real(*a, **k))
    items, want = [], []
    for name in ("pt", "prefix", "zs"):
        task = table.get(name).task
        ds = from_records(TEXTS)
        for ids, p in zip(task.model.encode(ds).ids, task.predict(ds), strict=True):
            items.append((task.model, ids))
            want.append(torch.tensor([p.scores[label] for label in task.labels]).log())
    lengths = {mixed._length(m.cached_prefix()) for m, _ in items}
    assert len(lengths) > 1, "the tasks' prefixes must differ in length"
    order = [5, 0, 9, 3, 11, 1, 7, 2, 10, 4, 8, 6][: len(items)]  # the tasks' rows interleaved in the batch
    assert sorted(order) == list(range(len(items)))
    items, want = [items[i] for i in order], [want[i] for i in order]
    got = mixed.score_mixed(items)
    assert calls and calls[0] >= 2  # one pass, at least two tasks' prefixes in it
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-5)
    backbone = items[0][0].backbone  # a Llama-family decoder: its grouped attention takes the plan, never switched
    assert backbone.model.config._attn_implementation == attention.GROUPED
    assert backbone.takes_one_pass  # so training's one-pass steps still run beside a server's mixed batches
    again = table.get("pt").task.predict(from_records(TEXTS))  # the library's own path, through the fallback
    assert [p.label for p in again] == [p.label for p in table.get("pt").task.predict(from_records(TEXTS))]


def test_cascade_attention_parts_agree_with_padded_keys_and_masks():
    """The CPU kernel's keys are padded with masked zeros to a multiple of 16, and the rows' mask is laid out once
    per pass already padded: the fused part and the products (the GPU path, which reads only the keys' own mask
    columns) give the same output and log-sum-exp as attention over the unpadded keys."""
    import torch

    from prompttune.shared_prefix import flash

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 6, 8), torch.randn(2, 3, 11, 8), torch.randn(2, 3, 11, 8)
    mask = torch.zeros(2, 1, 6, 11)
    mask[0, ..., :3] = torch.finfo(torch.float32).min  # row 0's left padding
    want = torch.softmax(q @ k.transpose(2, 3) * 0.5 + mask, -1) @ v
    padded = flash.pad_mask(mask, 5)  # as Plan.rows_mask lays it out
    for fn in (flash.attend, flash.attend_eager):
        for m in (mask, padded):
            out, lse = fn(q, k, v, m, 0.5)
            assert torch.allclose(out, want, atol=1e-5)
            assert torch.allclose(lse, torch.logsumexp(q @ k.transpose(2, 3) * 0.5 + mask, -1), atol=1e-5)
    long_k, long_v = torch.randn(1, 3, 43, 8), torch.randn(1, 3, 43, 8)  # a prefix past KEY_ALIGN_PAYS: padded to 48
    out, lse = flash.attend(q[:1], long_k, long_v, None, 0.5)
    assert torch.allclose(out, torch.softmax(q[:1] @ long_k.transpose(2, 3) * 0.5, -1) @ long_v, atol=1e-5)


def test_packed_attention_equals_each_row_over_its_prefix_and_itself():
    """Packed.attend on random keys: short prefixes share a call, a long one has its own, a row without a prefix
    joins a call; every token's output equals softmax attention over [its task's prefix | its row up to itself]."""
    import torch

    from prompttune.shared_prefix import packed

    torch.manual_seed(0)
    kv, rep, hd, layers = 2, 3, 8, 1

    def prefix(p):
        return [(torch.randn(1, kv, p, hd), torch.randn(1, kv, p, hd)) for _ in range(layers)]

    a, b, c = prefix(18), prefix(18), prefix(300)
    valid = torch.zeros(5, 6, dtype=torch.bool)
    for r, n in enumerate([3, 6, 1, 4, 2]):
        valid[r, 6 - n :] = True  # left padding
    groups = [(torch.tensor([0, 1]), a), (torch.tensor([2]), b), (torch.tensor([3]), c), (torch.tensor([4]), None)]
    plan = packed.Packed(groups, valid)
    assert [len(ch.prefixes) for ch in plan.chunks] == [2, 1]  # a and b share; c alone, the prefix-less row joins it
    n = len(plan.order)
    assert n == 16 and (n + plan.tail) % packed.PACK_ALIGN == 0
    q = torch.randn(1, kv * rep, n + plan.tail, hd)
    k, v = torch.randn(1, kv, n + plan.tail, hd), torch.randn(1, kv, n + plan.tail, hd)
    out = plan.attend(q, k, v, 0, hd**-0.5)[0]  # (n + tail, h, hd)
    assert torch.all(out[n:] == 0)
    at = 0
    for rows, pre in groups:
        for r in rows.tolist():
            length = int(valid[r].sum())
            for j in range(length):
                t = at + j
                keys = [k[0, :, at : t + 1]]
                vals = [v[0, :, at : t + 1]]
                if pre:
                    keys.insert(0, pre[0][0][0])
                    vals.insert(0, pre[0][1][0])
                kk, vv = torch.cat(keys, 1), torch.cat(vals, 1)  # (kv, keys, hd)
                qq = q[0, :, t].view(kv, rep, hd)
                want = torch.softmax(qq @ kk.transpose(1, 2) * hd**-0.5, -1) @ vv  # (kv, rep, hd)
                assert torch.allclose(out[t], want.reshape(kv * rep, hd), atol=1e-5), (r, j)
            at += length


def test_a_packed_pass_builds_no_token_by_token_mask(table, monkeypatch):  # noqa: F811 - the imported fixture
    """transformers would build a (tokens x tokens) causal mask for the packed sequence (32 rows of 4,000 tokens:
    32 GB); the packed pass hands it a placeholder, so no mask is built at all."""
    import torch
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    from prompttune.shared_prefix.cascade import run_rows

    model = table.get("pt").task.model
    rows = model.encode(from_records(TEXTS)).ids
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = torch.tensor(r), 1
    prefix = model.cached_prefix()
    positions = (prefix[0][0].shape[2] + mask.cumsum(1) - 1).clamp(min=0)
    groups = [(torch.arange(len(rows)), prefix)]
    ids, embeds = model.row_inputs(ids)  # soft tokens in a row come as embeddings

    def run(**kw):
        return run_rows(model.backbone, ids, mask, positions, groups, inputs_embeds=embeds, **kw)

    want = run()
    built = []
    impl = model.backbone.model.config._attn_implementation
    real = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[impl]
    monkeypatch.setitem(
        ALL_MASK_ATTENTION_FUNCTIONS._global_mapping, impl, lambda *a, **k: built.append(1) or real(*a, **k)
    )
    again = run()
    assert built == [] and torch.equal(again, want)
    run(return_cache=True)
    assert built == []  # with a cache returned too
