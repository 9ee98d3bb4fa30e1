"""Multi-token label words as continuation chunks: every form's 2nd.. tokens scored in one tree-masked pass.

Each form's tokens see the row's keys/values and the form's own earlier tokens, so all forms share one copy of
a row's cache (a copy per row x form held 19-22 GB for 1,000 labels). Forms are grouped in chunks of at most
``CONTINUATION_CHUNK`` tokens, so one pass's attention stays bounded however many labels there are.
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
