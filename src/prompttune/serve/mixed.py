"""Rows of different label-word tasks scored in ONE forward pass over the shared frozen backbone.

Each task's constant prefix (soft tokens, prefix keys/values, system text, demos) is cached as keys/values
when it loads (``PrefixModel.cached_prefix``). A mixed batch lays every row out as

    [pad to the longest prefix][its task's prefix][left padding][its row's tokens]

with the padding masked, and numbers each row's tokens from the end of ITS task's prefix (the cached keys
already carry their rotary positions), so every row sees exactly what it sees in a one-task batch
(``PromptModel.label_scores``). The read-out is per row's task: the LM head's rows of that task's label
tokens at the last position, multi-token label words continued from the rows' cache, calibration applied as
``PromptModel.score`` applies it. A batch of one task passes its prefix unexpanded, not copied per row.

This module reads PromptModel's attributes (``candidates``, ``form_tokens``, ``form_token_ids``,
``form_label``, ``max_form_len``, ``row_inputs``) and writes the padding and read-out itself, so
``scorer.py`` stays the single-task path.

Classification-head tasks pooled at the last token (a decoder's head: ``mixable_head``) join the same pass: the
layout is the same (their prefix is the method's soft slot), and the read-out is the task's head on the last
position's hidden state, as ``PooledClassifier`` reads it; their item is a HeadModel, their output probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from prompttune.core.backbone import KV
from prompttune.core.kv_cache import stack_left_padded
from prompttune.heads.model import HeadModel
from prompttune.shared_prefix.cascade import run_rows


def mixable_head(task) -> bool:
    """Whether a head task's rows can be scored in a mixed pass: a classification head pooled at the last token
    of a decoder's row (no soft tokens inside the row). Tagging and QA heads, and encoders, run per task."""
    model = task.model
    return (task.kind == "classification" and model.backbone.kind == "decoder" and not model.inline_soft
            and getattr(model.head, "pool", None) == "last")  # fmt: skip


@torch.no_grad()
def score_mixed(items: Sequence[tuple[object, list[int]]]) -> list[Tensor]:
    """Label log-probabilities (normalized, calibrated) for each (PromptModel, row token ids) pair.

    Every model must share one backbone. Returns one (n_labels,) tensor per item, in order.
    """
    if not items:
        return []
    models = [m for m, _ in items]
    backbone = models[0].backbone
    if any(m.backbone is not backbone for m in models):
        raise ValueError("score_mixed: every task in a batch must share one backbone")
    distinct = list({id(m): m for m in models}.values())
    prefixes = {id(m): m.cached_prefix() for m in distinct}
    plen = [_length(prefixes[id(m)]) for m in models]
    rows = [ids for _, ids in items]
    b, width, top = len(items), max(len(r) for r in rows), max(plen)

    # rows left-padded to `width`; each row's positions continue from its own prefix's end
    pad = backbone.tokenizer.pad_token_id
    ids = torch.full((b, width), pad, dtype=torch.long)
    mask = torch.zeros(b, width, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
    start = torch.tensor(plen)[:, None]
    positions = (start + mask.cumsum(1) - 1).clamp(min=start)  # (b, width)
    prefix_mask = torch.zeros(b, top, dtype=torch.long)
    for i, p in enumerate(plen):
        prefix_mask[i, top - p :] = 1
    attention = torch.cat([prefix_mask, mask], dim=1)  # (b, top + width)

    groups: dict[int, list[int]] = {}
    for i, m in enumerate(models):
        groups.setdefault(id(m), []).append(i)
    input_ids, embeds = _inputs(distinct, groups, ids, backbone)
    need_cache = any(getattr(m, "max_form_len", 1) > 1 for m in distinct)
    cascade = _prefixes_held_once(backbone, plen)
    if cascade:
        with_prefix = [(torch.tensor(groups[id(m)]), prefixes[id(m)]) for m in distinct if prefixes[id(m)]]
        out = run_rows(backbone, input_ids, mask, positions, with_prefix, embeds, return_cache=need_cache)
        attention = mask  # the rows' cache holds the rows only
    else:  # encoders: every row's prefix laid out in front of it
        prefix = (
            prefixes[id(models[0])] if len(distinct) == 1 else stack_left_padded([prefixes[id(m)] for m in models], top)
        )
        out = backbone.run(
            input_ids, attention, positions, prefix or None, inputs_embeds=embeds, return_cache=need_cache
        )
    hidden, cache = out if need_cache else (out, None)

    result: list[Tensor | None] = [None] * b
    for m in distinct:
        idx = groups[id(m)]
        sel = torch.tensor(idx)
        if isinstance(m, HeadModel):  # a classification head pooled at the last token: its probabilities
            last = hidden[sel, -1:].float()  # (g, 1, d): "the last token" of one-token rows
            probs = m.head(last, torch.ones(len(idx), dtype=torch.long, device=last.device)).softmax(-1).cpu()
            for j, i in enumerate(idx):
                result[i] = probs[j]
            continue
        rows_w = backbone.lm_rows(m.candidates)  # (C, d)
        first = F.log_softmax(hidden[sel, -1].float() @ rows_w.float().T, dim=-1)  # (g, C)
        forms = first[:, torch.tensor([t[0] for t in m.form_tokens])]  # (g, F)
        if m.max_form_len > 1:
            sub = [(k[sel], v[sel]) for k, v in cache]
            forms = forms + _continuations(m, sub, attention[sel], positions[sel], rows_w, prefixes[id(m)], cascade)
        scores = F.log_softmax(_forms_to_labels(m, forms), dim=-1)
        calibration = m.verbalizer.calibration
        if calibration is not None:
            scores = F.log_softmax(scores - torch.tensor(calibration), dim=-1)
        for j, i in enumerate(idx):
            result[i] = scores[j]
    return result


def _prefixes_held_once(backbone, plen: list[int]) -> bool:
    """Whether to run the rows packed with each task's prefix held once (shared_prefix/packed.py) rather than padded
    with every row's prefix laid out in front of it: always for a decoder (encoders take no cache). Measured (32 rows
    of 4-11 tokens, default decoder, 2 cores, ms a batch, laid out -> packed): one task with an 18-token soft
    prompt 118 -> 105-110 in bfloat16, 270 -> 227 in float32; one with 89 tokens of few-shot demos 374 -> 310
    in float32; bench_serve.py's 7 label-word tasks mixed (cascaded, padded) 155 -> 136-139 in bfloat16, 357 ->
    290 in float32."""
    return backbone.kind == "decoder" and bool(plen)


def _length(prefix: KV) -> int:
    return prefix[0][0].shape[2] if prefix else 0


def _inputs(distinct, groups, ids: Tensor, backbone) -> tuple[Tensor | None, Tensor | None]:
    """(input_ids, None) when no row carries soft tokens, else (None, embeddings) built per row's task."""
    parts = {id(m): m.row_inputs(ids[torch.tensor(groups[id(m)])]) for m in distinct}
    if all(e is None for _, e in parts.values()):
        return ids, None
    embeds = None
    for m in distinct:
        idx = torch.tensor(groups[id(m)])
        part_ids, part_embeds = parts[id(m)]
        e = part_embeds if part_embeds is not None else backbone.embed(part_ids)
        if embeds is None:
            embeds = e.new_zeros(ids.shape[0], ids.shape[1], e.shape[-1])
        embeds[idx] = e.to(embeds.dtype)
    return None, embeds


def _continuations(
    m, cache: KV, attention: Tensor, positions: Tensor, rows_w: Tensor, prefix: KV, cascade: bool
) -> Tensor:
    """Log-likelihood of the 2nd.. tokens of each multi-token label word, continuing the rows' cache. (g, F)"""
    g = attention.shape[0]
    n_forms, width = len(m.form_token_ids), m.max_form_len - 1
    cont = torch.zeros(n_forms, width, dtype=torch.long)
    cont_mask = torch.zeros(n_forms, width, dtype=torch.long)
    target = torch.zeros(n_forms, width, dtype=torch.long)
    for f, (toks, cand) in enumerate(zip(m.form_token_ids, m.form_tokens, strict=True)):
        if len(toks) > 1:
            cont[f, : len(toks) - 1] = torch.tensor(toks[:-1])
            cont_mask[f, : len(toks) - 1] = 1
            target[f, : len(toks) - 1] = torch.tensor(cand[1:])
    cache_rep = [(k.repeat_interleave(n_forms, 0), v.repeat_interleave(n_forms, 0)) for k, v in cache]
    att = torch.cat([attention.repeat_interleave(n_forms, 0), cont_mask.repeat(g, 1)], dim=1)
    pos = positions[:, -1:].repeat_interleave(n_forms, 0) + 1 + torch.arange(width)
    if cascade:  # the cache holds the rows only; the task's prefix joins in the attention
        groups = [(torch.arange(g * n_forms), prefix)] if prefix else []
        hidden = run_rows(m.backbone, cont.repeat(g, 1), att, pos, groups, past=cache_rep)  # (g * F, width, d)
    else:
        hidden = m.backbone.run(cont.repeat(g, 1), att, pos, cache_rep)
    logp = F.log_softmax(hidden.float() @ rows_w.float().T, dim=-1)  # (g * F, width, C)
    picked = logp.gather(2, target.repeat(g, 1)[..., None])[..., 0] * cont_mask.repeat(g, 1)
    return picked.sum(1).view(g, n_forms)


def _forms_to_labels(m, forms: Tensor) -> Tensor:
    """A label's score: the log of the mean probability of its words. (g, n_labels)"""
    n = len(m.verbalizer.labels)
    out = torch.full((forms.shape[0], n), float("-inf"))
    for li in range(n):
        cols = (m.form_label == li).nonzero()[:, 0]
        out[:, li] = torch.logsumexp(forms[:, cols], dim=1) - torch.log(torch.tensor(float(len(cols))))
    return out
