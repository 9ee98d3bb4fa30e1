"""A trainable prefix and the rows that read it, in one forward pass (and so one backward pass).

Training a prompt the usual way runs the backbone twice a step: once over the prefix's soft tokens (batch 1, a
few tokens) for their keys/values, and once over the rows, which read those keys/values. On a CPU each pass
streams every weight of the model from memory, forward and backward, whatever the rows: for the default decoder
~145 ms of a 720 ms step of 16 SST-2 rows (1 thread), and the part of a step that does not shrink when the
batch is split over data-parallel ranks. Here the prefix is sequence 0 of the rows' own batch:

- ``inputs``: sequence 0 holds the prefix's embeddings (left-padded to the batch's width, numbered from the end of
  the constant lead), each row follows with its tokens numbered from the end of the prefix, as it would over the
  prefix's keys/values;
- ``attention``: at every layer, sequence 0 attends to the lead and to itself (causal), and each row to the lead,
  to sequence 0's keys/values at this layer (the prefix's own), then to itself. Gradients reach the soft tokens
  through those keys/values, as through the prefix pass's.

Same products over the same numbers as the two passes (tests: scores and gradients equal to 1e-5 in float32);
the decoder must take its attention through ``core.attention`` (Llama-like decoders).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

KWARG = "prompttune_one_pass"  # how the layout reaches the attention function (transformers passes kwargs on)


@dataclass(frozen=True)
class Layout:
    lead: int  # positions of the constant lead (past keys/values) every sequence continues
    width: int  # padded width of the batch's new tokens
    prefix: int  # the prefix's tokens: the last ``prefix`` columns of sequence 0


def inputs(prefix: Tensor, rows: Tensor, row_mask: Tensor, lead: int) -> tuple[Tensor, Tensor, Tensor, Layout]:
    """(embeddings (1 + b, w, d), attention mask (1 + b, lead + w), positions (1 + b, w), layout) for a prefix's
    (1, p, d) embeddings and left-padded rows (b, l, d) whose mask is ``row_mask`` (b, l)."""
    p, (b, width, d) = prefix.shape[1], rows.shape
    w = max(width, p)
    if w > width:  # rows shorter than the prefix: pad them on the left too
        rows = torch.cat([rows.new_zeros(b, w - width, d), rows], dim=1)
        row_mask = torch.cat([row_mask.new_zeros(b, w - width), row_mask], dim=1)
    first = torch.cat([prefix.new_zeros(1, w - p, d), prefix.to(rows.dtype)], dim=1)
    own = torch.cat([torch.zeros(1, w - p, dtype=torch.long), torch.ones(1, p, dtype=torch.long)], dim=1)
    mask = torch.cat([own, row_mask.to(torch.long).cpu()])
    positions = torch.cat(
        [
            (lead + own.cumsum(1) - 1).clamp(min=lead),
            (lead + p + mask[1:].cumsum(1) - 1).clamp(min=lead + p),
        ]
    )
    attention = torch.cat([torch.ones(1 + b, lead, dtype=torch.long), mask], dim=1)
    return torch.cat([first, rows]), attention, positions, Layout(lead, w, p)


def attention(attend, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, layout: Layout, **kw):
    """One layer's attention for a batch from ``inputs``: query (1 + b, h, w, hd), key/value (1 + b, kv, lead + w,
    hd), mask additive (1 + b, 1, w, lead + w) or None (causal). ``attend(query, key, value, mask, **kw)`` is the
    decoder's own attention; returns its output (1 + b, w, h, hd) and no weights."""
    lead, w, p = layout.lead, layout.width, layout.prefix
    if mask is None:
        mask = _causal(lead, w, query.dtype, query.device).expand(query.shape[0], 1, w, lead + w)
    mask = mask[..., : lead + w]
    first, _ = attend(query[:1], key[:1], value[:1], mask[:1], **kw)
    b = query.shape[0] - 1
    if b == 0:
        return first, None
    span = slice(lead + w - p, lead + w)  # the prefix's own keys/values at this layer

    def with_prefix(x: Tensor) -> Tensor:
        own = x[1:]
        shared = x[:1, :, span].expand(b, -1, -1, -1)
        return torch.cat([own[:, :, :lead], shared, own[:, :, lead:]], dim=2)

    open_cols = mask.new_zeros(b, mask.shape[1], w, p)
    row_mask = torch.cat([mask[1:, ..., :lead], open_cols, mask[1:, ..., lead:]], dim=-1)
    rows, _ = attend(query[1:], with_prefix(key), with_prefix(value), row_mask, **kw)
    return torch.cat([first, rows]), None


def _causal(lead: int, w: int, dtype: torch.dtype, device) -> Tensor:
    """Additive (1, 1, w, lead + w) mask: every new token sees the lead and the new tokens up to itself."""
    allowed = torch.ones(w, w, dtype=torch.bool, device=device).tril()
    allowed = torch.cat([torch.ones(w, lead, dtype=torch.bool, device=device), allowed], dim=1)
    mask = torch.zeros(w, lead + w, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]
