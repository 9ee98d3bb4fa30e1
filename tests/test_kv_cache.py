"""core.kv_cache.GrowingCache: the keys/values a step reads equal what concatenation gives, through growth
(a buffer that runs out of room), rows leaving and batches joining; decoding through it past its room equals
decoding each row alone."""

from __future__ import annotations

import torch

import prompttune.core.kv_cache as kv_cache
from prompttune.core.data import from_records
from prompttune.core.generate import GenerationConfig
from prompttune.core.kv_cache import GrowingCache
from prompttune.generation.task import GenerationTask


def test_updates_past_the_room_keep_every_position(tiny_backbone, monkeypatch):
    monkeypatch.setattr(kv_cache, "ROOM", 2)  # the buffer grows every 2 positions
    config = tiny_backbone.model.config
    layers = len(GrowingCache(None, 1, config).layers)
    prefix = [(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)) for _ in range(layers)]
    cache = GrowingCache(prefix, 2, config)
    expected = [(k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1)) for k, v in prefix]
    for _ in range(7):
        for i, layer in enumerate(cache.layers):
            k, v = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
            got = layer.update(k, v)
            expected[i] = (torch.cat([expected[i][0], k], 2), torch.cat([expected[i][1], v], 2))
            torch.testing.assert_close(got, expected[i], rtol=0, atol=0)
    assert cache.get_seq_length() == 10
    cache.keep_rows(torch.tensor([1]))  # row 0 leaves
    for (k, v), (ek, ev) in zip(cache.kv(), expected, strict=True):
        torch.testing.assert_close((k, v), (ek[1:], ev[1:]), rtol=0, atol=0)
    short = GrowingCache(prefix, 1, config)  # 3 positions: left-padded to 10 when joined
    joined = GrowingCache.join(cache, short, config)
    k0, v0 = joined.kv()[0]
    assert k0.shape[:3] == (2, 2, 10)
    torch.testing.assert_close(k0[0], expected[0][0][1], rtol=0, atol=0)
    torch.testing.assert_close(k0[1, :, 7:], prefix[0][0][0], rtol=0, atol=0)
    assert not k0[1, :, :7].any() and not v0[1, :, :7].any()


def test_decoding_past_the_room_equals_each_row_alone(tiny_backbone, monkeypatch):
    monkeypatch.setattr(kv_cache, "ROOM", 3)  # decoding grows every buffer several times
    task = GenerationTask.create(tiny_backbone, "prefix-tuning", {"num_virtual_tokens": 4}, None, seed=1)
    config = GenerationConfig(max_new_tokens=14, repetition_penalty=1.0, no_repeat_ngram_size=0)
    rows = from_records([{"input": w} for w in ["a great movie", "no", "the cat sat on the mat"]]).rows
    batched = task.write(rows, config)
    alone = [task.model.generate(x.ids, config).strip() for x in task.model.encode(rows, targets=False)]
    assert batched == alone
