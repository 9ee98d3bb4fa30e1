"""Multi-token label words as continuation chunks: every form's 2nd.. tokens scored in one tree-masked pass.

Each form's tokens see the row's keys/values and the form's own earlier tokens, so all forms share one copy of
a row's cache (a copy per row x form held 19-22 GB for 1,000 labels). Forms are grouped in chunks of at most
``CONTINUATION_CHUNK`` tokens, so one pass's attention stays bounded however many labels there are.

A single chunk of at most ``INLINE_TOKENS`` tokens (the usual case: a few labels, some of several tokens) does
not need a pass of its own: its tokens run after each row in the row's own pass (``inline_layout``,
``inline_mask``), which saves a forward (and in training a backward) pass through every frozen layer a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

CONTINUATION_CHUNK = 256  # label-form tokens scored together in one tree-masked pass over the rows' cache


@dataclass
class ContinuationChunk:
    """Some label forms' 2nd.. tokens as one sequence: each token sees the row and its own form's earlier tokens."""

    ids: Tensor  # (1, n) the input token of each step (the form's previous token)
    depth: Tensor  # (n,) steps after the row's last token, from 0
    target: Tensor  # (1, n) candidate index of the token predicted there
    visible: Tensor  # (n, n) bool: step i sees step j
    assign: Tensor  # (n, n_forms) 1 where step i belongs to form f

    def to(self, device: torch.device) -> ContinuationChunk:
        """This chunk's tensors on ``device`` (the backbone's)."""
        tensors = (self.ids, self.depth, self.target, self.visible, self.assign)
        return ContinuationChunk(*(t.to(device) for t in tensors))


def continuation_chunks(token_ids: list[list[int]], cand_ids: list[list[int]]) -> list[ContinuationChunk]:
    """The multi-token forms in chunks of at most CONTINUATION_CHUNK steps (a longer form: a chunk of its own)."""
    groups: list[list[int]] = [[]]
    size = 0
    for f, toks in enumerate(token_ids):
        steps = len(toks) - 1
        if steps == 0:
            continue
        if size and size + steps > CONTINUATION_CHUNK:
            groups.append([])
            size = 0
        groups[-1].append(f)
        size += steps
    chunks = []
    for group in (g for g in groups if g):
        ids, depth, target, owner = [], [], [], []
        for f in group:
            steps = len(token_ids[f]) - 1
            ids += token_ids[f][:-1]
            depth += range(steps)
            target += cand_ids[f][1:]
            owner += [f] * steps
        own = torch.tensor(owner)
        d = torch.tensor(depth)
        visible = (own[:, None] == own[None, :]) & (d[None, :] <= d[:, None])
        assign = torch.zeros(len(owner), len(token_ids))
        assign[torch.arange(len(owner)), own] = 1.0
        chunks.append(ContinuationChunk(torch.tensor([ids]), d, torch.tensor([target]), visible, assign))
    return chunks


def chunk_scores(hidden: Tensor, chunk: ContinuationChunk, rows_w: Tensor) -> Tensor:
    """(b, F) summed log-likelihood of each form's 2nd.. tokens, from the hidden states of the chunk's steps
    (rows_w: the LM head's rows of the candidate tokens)."""
    b, n = hidden.shape[0], chunk.ids.shape[1]
    logp = torch.nn.functional.log_softmax(hidden[:, :n].float() @ rows_w.float().T, dim=-1)  # (b, n, C)
    picked = logp.gather(2, chunk.target.expand(b, n)[..., None])[..., 0]  # (b, n)
    return picked @ chunk.assign


INLINE_TOKENS = 64  # a chunk of at most this many label tokens runs in the rows' own pass (no second pass)


def inline_layout(chunks: list[ContinuationChunk | None], counts: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Per row: its group's one chunk's token ids (b, n), depths (b, n) and tree (b, n, n), padded to the longest
    chunk (``counts``: rows per group; a group without a chunk gets padding steps that see only themselves)."""
    b, n = sum(counts), max(c.ids.shape[1] for c in chunks if c is not None)
    dev = next(c.ids.device for c in chunks if c is not None)
    ids = torch.zeros(b, n, dtype=torch.long, device=dev)
    depth = torch.zeros(b, n, dtype=torch.long, device=dev)
    seen = torch.eye(n, dtype=torch.bool, device=dev).repeat(b, 1, 1)
    start = 0
    for c, k in zip(chunks, counts, strict=True):
        if c is not None:
            m = c.ids.shape[1]
            ids[start : start + k, :m], depth[start : start + k, :m] = c.ids, c.depth
            seen[start : start + k, :m, :m] = c.visible
        start += k
    return ids, depth, seen


def inline_mask(attention: Tensor, w: int, seen: Tensor, dtype: torch.dtype) -> Tensor:
    """(b, 1, w + n, P + w + n) additive mask for rows run with their label tokens after them in one pass.

    attention: (b, P + w) 1 where a key of the prefix or row is real (rows left-padded, w their width); seen:
    (b, n, n) the label tokens' tree. A row token sees the real prefix keys and its row's real tokens up to
    itself (a padding token sees itself, so no query is left with no key); a label token sees every real prefix
    and row key and the earlier tokens of its own word.
    """
    b, n = seen.shape[0], seen.shape[1]
    real = attention.to(seen.device).bool()
    p = real.shape[1] - w
    causal = torch.ones(w, w, dtype=torch.bool, device=seen.device).tril()
    rows = torch.cat(
        [
            real[:, None, :p].expand(b, w, p),
            (causal & real[:, None, p:]) | torch.eye(w, dtype=torch.bool, device=seen.device),
            torch.zeros(b, w, n, dtype=torch.bool, device=seen.device),
        ],
        dim=-1,
    )
    words = torch.cat([real[:, None, :].expand(b, n, p + w), seen], dim=-1)
    allowed = torch.cat([rows, words], dim=1)
    return torch.zeros(allowed.shape, dtype=dtype, device=seen.device).masked_fill_(~allowed, torch.finfo(dtype).min)[
        :, None
    ]


def with_label_tokens(
    input_ids, embeds, attention: Tensor, positions: Tensor, layout, embed, dtype: torch.dtype, packed: bool = False
):
    """The rows' pass inputs with each row's label tokens after it: (input ids, embeddings, mask, positions).

    layout: ``inline_layout``'s (ids, depth, seen); embed: the backbone's embedding (where the rows run as
    embeddings, the label tokens join them as embeddings too). ``packed``: the mask is the rows' and their label
    tokens' (b, w + n), for ``shared_prefix.run_over`` with the tree ``seen`` given apart."""
    cont, depth, seen = layout
    if embeds is not None:
        embeds = torch.cat([embeds, embed(cont).to(embeds.dtype)], dim=1)
    else:
        input_ids = torch.cat([input_ids, cont.to(input_ids.device)], dim=1)
    w = positions.shape[1]
    if packed:
        mask = torch.cat([attention[:, -w:], torch.ones(cont.shape, dtype=attention.dtype)], dim=1)
    else:
        mask = inline_mask(attention.to(seen.device), w, seen, dtype)
    pos = torch.cat([positions.to(depth.device), positions[:, -1:].to(depth.device) + 1 + depth], dim=1)
    return input_ids, embeds, mask, pos
