"""Greedy decoding over one cached prefix, with continuous batching: at most ``slots`` rows write at once, one
token per row per step, each row ending at an end token, at ``max_new_tokens`` or before its first stop string.
A row that has finished leaves the batch and the next rows take its place, so the batch stays full until the
input runs out instead of running every row to the longest one. A finished row's slot idles (its step costs next
to nothing: the weights are read once a step for all rows) until the next admission, which drops every finished
row in one copy of the cache; dropping rows as they finished copied the whole cache at about every other step.

A decoding step costs about the same for 1 or 64 rows (the weights are read once a step either way: on this
2-core CPU in bfloat16 an MLP projection of the default decoder takes 0.23 ms for 1 row, 0.22 ms for 16 and
0.28 ms for 64), so what a batch writes per second follows the rows it keeps busy. New rows run their prompt over the
prefix together (``ADMIT_FRACTION`` of the slots at a time, so a prompt pass is shared), then join the rows
already writing: their keys/values are left-padded to a common width (masked; a key keeps the position it was
computed at, so the columns' order does not matter) and each row keeps its own positions. The keys/values
grow in place (``core.kv_cache.GrowingCache``), not by concatenation: a step copies no cache.

With ``draft_tokens`` (prompt-lookup decoding, ``generation/lookup``) a step's rows also take up to that many
drafted tokens each; every one greedy decoding would have chosen at its place is kept (with the choice after it),
so a step can write several tokens per row. The drafted tokens no row kept are masked out, and the cache is cut
back where no row kept any. On E2E with a trained prefix (64 inputs, 16 slots, bfloat16) 2 drafted tokens took
143 passes down to 84 and 175 -> 217 tokens/s; in float32 106 -> 116 tokens/s, all 64 outputs identical (in
bfloat16 a wider product rounds differently: 43 of 64 outputs were identical, the rest part at near-ties).

Token for token what ``core.generate.Generator`` writes for each row alone (greedy, the same repetition
settings over each row's generated tokens). Sampling and ``finish_sentence`` go through ``Generator`` row by
row.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from prompttune.core import decode_step
from prompttune.core.backbone import KV, Backbone
from prompttune.core.generate import GenerationConfig
from prompttune.core.kv_cache import GrowingCache
from prompttune.generation.lookup import NgramDrafts
from prompttune.shared_prefix.cascade import Plan, run_rows
from prompttune.shared_prefix.one_prefix import holds_once

ADMIT_FRACTION = 4  # new rows join when a quarter of the slots is free (or no row is writing)
# A prefix of at least this many tokens is held once (``once``), a shorter one copied into every row's cache.
# Measured (32 E2E inputs under few-shot demos, 16 slots, bfloat16, 2 cores; tokens/s held vs copied): 108-token
# prefix 211-221 vs 224-226, 195: 170-173 vs 177-181, 381: 173-175 vs 160-161 (peak RSS 1.21 vs 1.37-1.41 GB),
# 1,487: 184-189 vs 82-91 (1.21 vs 2.8-3.2 GB). Below the crossover the merge costs more than the copy saves.
HELD_PREFIX_TOKENS = 256


@dataclass
class _Batch:
    """The rows writing now: their keys/values (prefix included), mask and last positions."""

    rows: list[int] = field(default_factory=list)  # indices into the input
    cache: GrowingCache | None = None
    attention: Tensor | None = None  # (b, width)
    positions: Tensor | None = None  # (b, 1): each row's last position


def once(backbone: Backbone, prefix: KV | None, rows: list[list[int]]) -> bool:
    """Whether the rows decode over one copy of ``prefix`` (``shared_prefix.holds_once``: one prefix for all rows,
    each with tokens of its own, a decoder the cascade runs), their caches holding their own keys/values only,
    instead of the prefix copied into every row's: for a prefix of at least ``HELD_PREFIX_TOKENS``."""
    return bool(prefix) and prefix[0][0].shape[2] >= HELD_PREFIX_TOKENS and holds_once(backbone, prefix, rows)


def _join(a: _Batch, b: _Batch, config) -> _Batch:
    """Two batches as one: keys/values and masks left-padded to the wider one (padding masked out)."""
    if not a.rows:
        return b
    width = max(a.attention.shape[1], b.attention.shape[1])
    attention = torch.cat([F.pad(m, (width - m.shape[1], 0)) for m in (a.attention, b.attention)])  # zeros: masked
    cache = GrowingCache.join(a.cache, b.cache, config)
    return _Batch(a.rows + b.rows, cache, attention, torch.cat([a.positions, b.positions]))


def _keep(batch: _Batch, keep: list[int]) -> _Batch:
    if len(keep) == len(batch.rows):
        return batch
    idx = torch.tensor(keep, dtype=torch.long)
    batch.cache.keep_rows(idx)
    return _Batch([batch.rows[j] for j in keep], batch.cache, batch.attention[idx], batch.positions[idx])


@torch.no_grad()
def greedy_batch(
    backbone: Backbone,
    rows: list[list[int]],
    prefix: KV | None,
    embed: Callable[[Tensor], tuple[Tensor | None, Tensor | None]],
    config: GenerationConfig,
    slots: int | None = None,
) -> list[str]:
    """Each row's greedy continuation (in the given order), at most ``slots`` rows (default: all) at once."""
    p = prefix[0][0].shape[2] if prefix else 0
    slots = max(1, slots or len(rows))
    pad = backbone.tokenizer.pad_token_id or 0
    head = backbone.model.get_output_embeddings()
    processors = config.processors()
    ends, tok = backbone.end_token_ids, backbone.tokenizer
    out: list[list[int]] = [[] for _ in rows]
    limits = [min(config.max_new_tokens, backbone.max_length - p - len(r)) for r in rows]
    # longest prompts first: their texts tend to be the longest, so the batch ends on short rows, not a long tail
    pending = deque(sorted((i for i in range(len(rows)) if limits[i] > 0), key=lambda i: -len(rows[i])))
    live = _Batch()
    step_tokens: list[int] = []  # the live rows' last tokens, the next step's input

    held = once(backbone, prefix, rows)

    def admit(new: list[int]) -> tuple[_Batch, Tensor]:
        """New rows' prompts run over the prefix (left-padded): their keys/values and next-token logits."""
        width = max(len(rows[i]) for i in new)
        ids = torch.full((len(new), width), pad, dtype=torch.long)
        mask = torch.zeros(len(new), width, dtype=torch.long)
        for j, i in enumerate(new):
            ids[j, width - len(rows[i]) :] = torch.tensor(rows[i])
            mask[j, width - len(rows[i]) :] = 1
        positions = (p + mask.cumsum(1) - 1).clamp(min=p)
        input_ids, embeds = embed(ids)
        if held:  # the rows packed over one copy of the prefix; their cache holds their own keys/values only
            every = [(torch.arange(len(new)), prefix)]
            hidden, kv = run_rows(backbone, input_ids, mask, positions, every, embeds, return_cache=True)
            cache, attention = GrowingCache(kv, len(new), backbone.model.config), mask
        else:
            attention = torch.cat([torch.ones(len(new), p, dtype=torch.long), mask], dim=1)
            cache = GrowingCache(prefix, len(new), backbone.model.config)  # the prefix copied once, room to grow
            hidden = backbone.run(input_ids, attention, positions, cache, inputs_embeds=embeds)
        return _Batch(list(new), cache, attention, positions[:, -1:]), decode_step.linear(head, hidden[:, -1]).float()

    def choose(batch_rows: list[int], logits: Tensor) -> list[int]:
        """Each row's next token (after the repetition settings, over the row's own tokens so far)."""
        if processors:
            by_length: dict[int, list[int]] = {}
            for j, i in enumerate(batch_rows):
                by_length.setdefault(len(out[i]), []).append(j)
            for n, js in by_length.items():
                gen = torch.tensor([out[batch_rows[j]] for j in js], dtype=torch.long).view(len(js), n)
                logits[js] = processors(gen.to(logits.device), logits[js])
        return logits.argmax(-1).tolist()

    def written(batch_rows: list[int], nxt: list[int]) -> list[int]:
        """Record each row's token; the positions (in ``batch_rows``) of the rows that go on writing."""
        going = []
        for j, (i, t) in enumerate(zip(batch_rows, nxt, strict=True)):
            if t in ends:
                continue
            out[i].append(t)
            if config.stop and any(s in tok.decode(out[i], skip_special_tokens=True) for s in config.stop):
                continue
            if len(out[i]) < limits[i]:
                going.append(j)
        return going

    lookup = NgramDrafts(config.draft_tokens) if config.draft_tokens else None
    contexts = [[t for t in r if t >= 0] for r in rows] if lookup else []  # inputs' token ids (no soft slots)

    def step(live: _Batch, writing: list[int]) -> _Batch:
        """One step of every live row: its last token (and drafted ones, ``draft_tokens``) through the model."""
        drafts = [[] for _ in live.rows]
        if lookup:
            for j in writing:
                i = live.rows[j]
                drafts[j] = lookup.propose(contexts[i] + out[i], limits[i] - len(out[i]) - 1)
        width, b = 1 + max(map(len, drafts)), len(live.rows)
        padded = [[t, *d] + [pad] * (width - 1 - len(d)) for t, d in zip(step_tokens, drafts, strict=True)]
        input_ids = torch.tensor(padded, dtype=torch.long)  # (b, width): without drafts, each row's last token
        before = live.attention.shape[1]
        attention = torch.cat([live.attention, torch.ones(b, width, dtype=torch.long)], dim=1)
        # a finished row's position stays put (its output is never read; no position past the model's limit)
        moving = torch.tensor([[int(not d)] for d in done])
        plan = None
        if held:  # every row's step tokens merge the prefix in (indices where the model runs: GPUs too)
            dev = backbone.device
            plan = Plan([(torch.arange(b, device=dev), prefix)], torch.ones(b, width, dtype=torch.bool, device=dev))
        positions = live.positions + moving * torch.arange(1, width + 1)
        hidden = backbone.run(input_ids, attention, positions, live.cache, plan=plan)
        picked = hidden[writing] if len(writing) < b else hidden
        logits = decode_step.linear(head, picked).float()  # (writing, width, vocab)
        kept = [0] * b  # drafted tokens each row kept: the greedy choice at their place was theirs
        active = list(range(len(writing)))  # indices into ``writing`` still reading their drafts
        for s in range(width):
            nxt = choose([live.rows[writing[a]] for a in active], logits[:, s] if s == 0 else logits[active, s])
            going = set(written([live.rows[writing[a]] for a in active], nxt))
            follow = []
            for n, (a, t) in enumerate(zip(active, nxt, strict=True)):
                j = writing[a]
                step_tokens[j], done[j] = t, n not in going
                if not done[j] and s < len(drafts[j]) and drafts[j][s] == t:  # t is already the next input
                    kept[j] += 1
                    follow.append(a)
            active = follow
        if lookup:
            for j in writing:
                lookup.note(out[live.rows[j]])
        if width > 1:  # drafted tokens not kept: masked out, then cut where no row kept any
            for j, k in enumerate(kept):
                attention[j, before + 1 + k :] = 0
            width = 1 + max(kept)
            live.cache.crop(before + width - attention.shape[1])
        positions = live.positions + moving * (1 + torch.tensor([kept]).T)  # each row's last kept position
        return _Batch(live.rows, live.cache, attention[:, : before + width], positions)

    done: list[bool] = []  # per live row: finished (its slot idles until the next admission compacts the batch)
    while live.rows or pending:
        writing = [j for j, d in enumerate(done) if not d]
        free = slots - len(writing)
        admit_now = pending and (not writing or free >= max(1, slots // ADMIT_FRACTION))
        if admit_now or not writing:  # compact: the finished rows leave (one copy of the cache per admission)
            live = _keep(live, writing) if writing else _Batch()
            step_tokens, done = [step_tokens[j] for j in writing], [False] * len(writing)
            writing = list(range(len(writing)))
        joined, joined_tokens = _Batch(), []
        if admit_now:
            new = [pending.popleft() for _ in range(min(free, len(pending)))]
            batch, logits = admit(new)
            nxt = choose(batch.rows, logits)
            going = written(batch.rows, nxt)
            joined, joined_tokens = _keep(batch, going), [nxt[j] for j in going]
        if writing:
            live = step(live, writing)
        if joined.rows:
            live, step_tokens = _join(live, joined, backbone.model.config), step_tokens + joined_tokens
            done += [False] * len(joined.rows)
    texts = [tok.decode(o, skip_special_tokens=True) for o in out]
    if config.stop:
        cuts = [min((j for j in (t.find(s) for s in config.stop) if j >= 0), default=-1) for t in texts]
        texts = [t[:c] if c >= 0 else t for t, c in zip(texts, cuts, strict=True)]
    return texts
