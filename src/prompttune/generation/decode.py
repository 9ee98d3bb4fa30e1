"""Batched greedy decoding over one cached prefix: rows left-padded after the prefix's keys/values, one token
per row per step, each row ending at an end token, at ``max_new_tokens`` or before its first stop string.

Token for token what ``core.generate.Generator`` writes for each row alone (greedy, the same repetition
settings over each row's generated tokens), a batch of rows at the price of a little more than one.
A row that has finished leaves the batch (its keys/values, mask and positions are dropped), so the steps
after it cost only what the rows still writing need; a batch whose outputs differ in length no longer runs
every row to its longest one. Sampling and ``finish_sentence`` go through ``Generator`` row by row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from prompttune.core.backbone import KV, Backbone
from prompttune.core.generate import GenerationConfig


@torch.no_grad()
def greedy_batch(
    backbone: Backbone,
    rows: list[list[int]],
    prefix: KV | None,
    embed: Callable[[Tensor], tuple[Tensor | None, Tensor | None]],
    config: GenerationConfig,
) -> list[str]:
    p = prefix[0][0].shape[2] if prefix else 0
    b, width = len(rows), max(len(r) for r in rows)
    pad = backbone.tokenizer.pad_token_id or 0
    ids = torch.full((b, width), pad, dtype=torch.long)
    mask = torch.zeros(b, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    positions = (p + mask.cumsum(1) - 1).clamp(min=p)
    attention = torch.cat([torch.ones(b, p, dtype=torch.long), mask], dim=1)
    limit = min(config.max_new_tokens, backbone.max_length - p - width)
    head = backbone.model.get_output_embeddings()
    processors = config.processors()
    ends = backbone.end_token_ids
    tok = backbone.tokenizer
    out: list[list[int]] = [[] for _ in rows]
    live = list(range(b))  # the rows still writing, in the batch's order
    input_ids, embeds = embed(ids)
    cache = prefix
    for _ in range(max(0, limit)):
        hidden, cache = backbone.run(input_ids, attention, positions, cache, inputs_embeds=embeds, return_cache=True)
        logits = head(hidden[:, -1]).float()  # (rows still writing, vocab)
        if processors:
            steps = len(out[live[0]])  # rows still writing all have the same number of tokens
            gen = torch.full((len(live), steps), pad, dtype=torch.long)
            if steps:
                gen[:] = torch.tensor([out[i] for i in live])
            logits = processors(gen.to(logits.device), logits)
        nxt = logits.argmax(-1).tolist()
        keep = []
        for j, (i, t) in enumerate(zip(live, nxt, strict=True)):
            if t in ends:
                continue
            out[i].append(t)
            if config.stop and any(s in tok.decode(out[i], skip_special_tokens=True) for s in config.stop):
                continue
            keep.append(j)
        if not keep:
            break
        if len(keep) < len(live):  # finished rows leave the batch
            rows_kept = torch.tensor(keep)
            cache = [(k[rows_kept.to(k.device)], v[rows_kept.to(v.device)]) for k, v in cache]
            attention, positions = attention[rows_kept], positions[rows_kept]
            live = [live[j] for j in keep]
        input_ids, embeds = torch.tensor([nxt[j] for j in keep])[:, None], None
        positions = positions[:, -1:] + 1
        attention = torch.cat([attention, torch.ones(len(live), 1, dtype=torch.long)], dim=1)
    texts = [tok.decode(o, skip_special_tokens=True) for o in out]
    if config.stop:
        cuts = [min((j for j in (t.find(s) for s in config.stop) if j >= 0), default=-1) for t in texts]
        texts = [t[:c] if c >= 0 else t for t, c in zip(texts, cuts, strict=True)]
    return texts
