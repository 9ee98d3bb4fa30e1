"""A mixed batch's rows packed into one sequence, task after task, with one attention call per task over its
cached prefix and its own rows (as varlen kernels batch sequences of different lengths).

``cascade.Plan`` keeps rows in a padded (rows, width) layout and splits each token's attention in two: one call
over every row's own keys, then per task one over its prefix, merged by log-sum-exp. Here the rows' real tokens
run as one sequence through every layer (no padding in any projection or MLP: rows of different tasks differ in
length, a hard prompt's text after the row, a soft prompt's none), and a task's tokens, contiguous in it, attend
``[its prefix | its rows' tokens]`` in one fused call whose mask keeps each token to its prefix and its own row's
earlier tokens. One call per task and no merge, where the split took one call more and about ten small
operations per layer to merge; the mask's cross-row blocks are computed for nothing, so a task's rows are cut
into chunks of at most ``CHUNK_TOKENS`` queries (a one-task batch of 32 rows is several calls, not one over all
its rows' keys).
"""

from __future__ import annotations

import torch
from torch import Tensor

from prompttune.serve.flash import KEY_ALIGN, attend

CHUNK_TOKENS = 128  # queries (a task's rows' tokens) per attention call
# The packed sequence is padded to a multiple of this many tokens: oneDNN keeps a compiled kernel per product
# shape (up to 1,024), so a sequence length that differs from batch to batch grew a server's memory with every
# new length (+113 MB over 1,500 mixed requests vs +60 with one task; bench_serve.py's RSS 8 tasks / 1 task 1.24).
PACK_ALIGN = 32


class _Chunk:
    __slots__ = ("start", "end", "prefix", "allowed", "mask")

    def __init__(self, start: int, end: int, prefix, allowed: Tensor):
        self.start, self.end, self.prefix, self.allowed = start, end, prefix, allowed
        self.mask = None  # the additive mask laid out for the layers' dtype and heads, at the first layer


class Packed:
    """The rows of a pass as one sequence: ``order`` (N,) each packed token's index (row * width + position) in the
    padded (rows, width) layout ``valid`` marks, task after task; per chunk of a task's rows, its slice of the
    sequence, its prefix's per-layer keys/values ((1, kv_heads, p, hd) each, or None) and which of its tokens each
    token sees."""

    def __init__(self, groups, valid: Tensor):
        self.shape = valid.shape
        n = valid.shape[1]
        order, self.chunks, start = [], [], 0
        for rows, prefix in groups:
            chunk: list[Tensor] = []
            for r in rows.tolist():
                pos = valid[r].nonzero()[:, 0]
                if chunk and sum(len(c) for c in chunk) + len(pos) > CHUNK_TOKENS:
                    start = self._close(chunk, prefix, start)
                    chunk = []
                if len(pos):
                    chunk.append(pos)
                    order.append(r * n + pos)
            if chunk:
                start = self._close(chunk, prefix, start)
        self.order = torch.cat(order) if order else torch.zeros(0, dtype=torch.long, device=valid.device)
        self.tail = -len(self.order) % PACK_ALIGN  # padding tokens after the real ones: attended by none

    def _close(self, chunk: list[Tensor], prefix, start: int) -> int:
        row = torch.cat([torch.full((len(p),), i, device=p.device) for i, p in enumerate(chunk)])
        idx = torch.arange(len(row), device=row.device)
        allowed = (row[:, None] == row[None, :]) & (idx[None, :] <= idx[:, None])  # own row, causal
        end = start + len(row)
        self.chunks.append(_Chunk(start, end, prefix, allowed))
        return end

    def pack(self, x: Tensor) -> Tensor:
        """(b, width, ...) in the padded layout to the packed (1, N + tail, ...), zeros in the tail."""
        flat = x.reshape(self.shape.numel(), *x.shape[2:])
        out = flat.new_zeros(len(self.order) + self.tail, *flat.shape[1:])
        out[: len(self.order)] = flat[self.order]
        return out[None]

    def unpack(self, x: Tensor) -> Tensor:
        """Packed tokens (N + tail, ...) to the padded layout (b, width, ...), zeros at the padding."""
        x = x[: len(self.order)]
        out = x.new_zeros(self.shape.numel(), *x.shape[1:]).index_copy_(0, self.order, x)
        return out.view(*self.shape, *x.shape[1:])

    def attend(self, query: Tensor, key: Tensor, value: Tensor, layer: int, scale: float) -> Tensor:
        """query (1, h, N, hd), key/value (1, kv_heads, N, hd) of the packed tokens -> (1, N, h, hd)."""
        _, h, total, hd = query.shape
        kv = key.shape[1]
        rep = h // kv
        out = query.new_empty(total, h, hd)
        out[total - self.tail :] = 0  # the tail's tokens attend nothing
        for c in self.chunks:
            s, e = c.start, c.end
            g = e - s
            q = query[0, :, s:e].reshape(1, kv, rep * g, hd)  # the query heads of a key/value head side by side
            keys, values = [key[:, :, s:e]], [value[:, :, s:e]]
            p = 0
            if c.prefix:
                pk, pv = c.prefix[layer]
                keys.insert(0, pk.to(key.dtype))
                values.insert(0, pv.to(value.dtype))
                p = pk.shape[2]
            extra = -(p + g) % KEY_ALIGN  # masked zero keys: the CPU kernel's fast path
            if extra:
                keys.append(key.new_zeros(1, kv, extra, hd))
                values.append(value.new_zeros(1, kv, extra, hd))
            if c.mask is None or c.mask.dtype != query.dtype:
                c.mask = _lay_out(c.allowed, p, extra, rep, query.dtype)
            o, _ = attend(q, torch.cat(keys, 2), torch.cat(values, 2), c.mask, scale)
            out[s:e] = o.view(h, g, hd).transpose(0, 1)
        return out[None]


def _lay_out(allowed: Tensor, p: int, extra: int, rep: int, dtype) -> Tensor:
    """The additive mask (1, 1, rep * g, p + g + extra) of a chunk: the prefix open, its own rows as ``allowed``,
    the alignment keys blocked; repeated for the query heads laid side by side."""
    g = allowed.shape[0]
    mask = torch.full((g, p + g + extra), torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    mask[:, :p] = 0
    mask[:, p : p + g].masked_fill_(allowed, 0)
    return mask.repeat(rep, 1)[None, None]
