"""Encoder backbones: the KV prefix reaches every layer, cached == uncached, soft input tokens run inline."""

from __future__ import annotations

import pytest
import torch
from tiny import make_encoder

from prompttune.core.backbone import Backbone
from prompttune.heads.task import HeadTask


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Backbone:
    return Backbone.load(str(make_encoder(tmp_path_factory.mktemp("tiny") / "encoder")))


def _ids(backbone: Backbone, text: str) -> torch.Tensor:
    return torch.tensor([backbone.tokenizer(text)["input_ids"]])


def test_encoder_is_detected_and_runs_like_the_plain_model(encoder):
    assert encoder.kind == "encoder"
    ids = _ids(encoder, "the cat sat on the mat")
    n = ids.shape[1]
    ours = encoder.run(ids, torch.ones(1, n, dtype=torch.long), torch.arange(n)[None], None)
    encoder.model.config._attn_implementation = "eager"
    try:
        ref = encoder.model(input_ids=ids).last_hidden_state
    finally:
        encoder.model.config._attn_implementation = "prompttune_prefix"
    torch.testing.assert_close(ours, ref)


def test_kv_prefix_is_attended_by_every_token_in_every_layer(encoder):
    """A prefix computed from the first tokens, then the rest: equal to one pass where only the prefix
    cannot see the rest (the block mask a KV prefix stands for)."""
    ids = _ids(encoder, "a great movie , truly wonderful and fun")
    n, p = ids.shape[1], 3
    kv = encoder.prefix_kv(encoder.embed(ids[:, :p]))
    assert len(kv) == encoder.config.num_hidden_layers and kv[0][0].shape[2] == p
    ours = encoder.run(ids[:, p:], torch.ones(1, n, dtype=torch.long), torch.arange(p, n)[None], kv)
    allowed = torch.ones(n, n)
    allowed[:p, p:] = 0
    mask = ((1 - allowed) * torch.finfo(torch.float32).min)[None, None]
    encoder.model.config._attn_implementation = "eager"
    try:
        ref = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state
    finally:
        encoder.model.config._attn_implementation = "prompttune_prefix"
    torch.testing.assert_close(ours, ref[:, p:])
    # and the prefix changes every later layer's output (it is not ignored)
    plain = encoder.run(ids[:, p:], torch.ones(1, n - p, dtype=torch.long), torch.arange(p, n)[None], None)
    assert not torch.allclose(plain, ours)


@pytest.mark.parametrize("method", ["p-tuning-v2", "prefix-tuning"])
def test_cached_prefix_equals_uncached_and_unbatched(encoder, method):
    task = HeadTask.create(encoder, "tokens", ["O", "B-X", "I-X"], method, {"num_virtual_tokens": 4})
    model = task.model
    model.trainable.eval()
    with torch.no_grad():
        torch.nn.init.normal_(next(iter(model.method.parameters())))  # a non-trivial prefix
    rows = [[2, 10, 11, 12, 3], [2, 20, 3], [2, 30, 31, 3]]
    with torch.no_grad():
        cached = model.hidden(rows, model.cached_prefix())
        fresh = model.hidden(rows, model.prefix_kv())
        singles = [model.hidden([r], model.prefix_kv())[0] for r in rows]
    torch.testing.assert_close(cached, fresh)
    for i, r in enumerate(rows):  # padding never leaks into real tokens
        torch.testing.assert_close(cached[i, : len(r)], singles[i], atol=1e-5, rtol=1e-5)
    assert model.prefix_kv()[0][0].requires_grad  # trained through the prefix


def test_soft_input_tokens_run_inline_on_an_encoder(encoder):
    """Prompt tuning on an encoder: its soft tokens see the row (bidirectional), so they are no cached
    prefix: the result equals one plain pass over [CLS] + soft + row."""
    task = HeadTask.create(encoder, "tokens", ["O", "B-X"], "prompt-tuning", {"num_virtual_tokens": 3})
    model = task.model
    assert model.inline_soft == 3 and model.prefix_kv() == []
    row = [2, 10, 11, 3]
    with torch.no_grad():
        ours = model.hidden([row], [])
        emb = encoder.embed(torch.tensor([row]))
        soft = model.method.slot_embeddings(model.slot)[None].to(emb.dtype)
        full = torch.cat([emb[:, :1], soft, emb[:, 1:]], dim=1)
        ref = encoder.model(inputs_embeds=full).last_hidden_state
    torch.testing.assert_close(ours[0], torch.cat([ref[0, :1], ref[0, 4:]]))
