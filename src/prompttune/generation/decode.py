"""Batched greedy decoding over one cached prefix: rows left-padded after the prefix's keys/values, one token
per row per step, each row ending at an end token, at ``max_new_tokens`` or before its first stop string.

Token for token what ``core.generate.Generator`` writes for each row alone (greedy, the same repetition
settings over each row's generated tokens), a batch of rows at the price of a little more than one.
Sampling and ``finish_sentence`` go through ``Generator`` row by row.
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
    done = [False] * b
    input_ids, embeds = embed(ids)
    cache = prefix
    for _ in range(max(0, limit)):
        hidden, cache = backbone.run(input_ids, attention, positions, cache, inputs_embeds=embeds, return_cache=True)
        logits = head(hidden[:, -1]).float()  # (b, vocab)
        if processors:
            steps = max(len(o) for o in out)
            gen = torch.full((b, steps), pad, dtype=torch.long)
            for i, o in enumerate(out):  # rows still running all have ``steps`` tokens
                if o:
                    gen[i, : len(o)] = torch.tensor(o)
            logits = processors(gen.to(logits.device), logits)
        nxt = logits.argmax(-1).tolist()
        for i, t in enumerate(nxt):
            if done[i]:
                continue
            if t in ends:
                done[i] = True
                continue
            out[i].append(t)
            if config.stop and any(s in tok.decode(out[i], skip_special_tokens=True) for s in config.stop):
                done[i] = True
        if all(done):
            break
        input_ids, embeds = torch.tensor(nxt)[:, None], None
        positions = positions[:, -1:] + 1
        attention = torch.cat([attention, torch.ones(b, 1, dtype=torch.long)], dim=1)
    texts = [tok.decode(o, skip_special_tokens=True) for o in out]
    if config.stop:
        cuts = [min((j for j in (t.find(s) for s in config.stop) if j >= 0), default=-1) for t in texts]
        texts = [t[:c] if c >= 0 else t for t, c in zip(texts, cuts, strict=True)]
    return texts
