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
its rows' keys), and tasks with short prefixes share a call (``SHARED_PREFIX_KEYS``), each token masked to its
own task's prefix columns.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prompttune.shared_prefix.flash import KEY_ALIGN, attend

CHUNK_TOKENS = 128  # queries (rows' tokens) per attention call
# Tasks whose prefixes together hold at most this many keys share a call (each token masked to its own task's):
# a batch of many tasks with a row or two each (1,000 soft prompts served at once) would otherwise make one small
# call per task and layer. 32 tasks x 1 row of an 18-token soft prompt, ms a batch (bfloat16, 2 threads): one call
# per task 160, shared 126-131, every row's prefix laid out in front of it 134-137; the 7 tasks of bench_serve.py
# 137 -> 132-133.
SHARED_PREFIX_KEYS = 160
# The packed sequence is padded to a multiple of this many tokens: oneDNN keeps a compiled kernel per product
# shape (up to 1,024), so a sequence length that differs from batch to batch grew a server's memory with every
# new length (+113 MB over 1,500 mixed requests vs +60 with one task; bench_serve.py's RSS 8 tasks / 1 task 1.24).
PACK_ALIGN = 32


def _length(prefix) -> int:
    return prefix[0][0].shape[2] if prefix else 0


class _Chunk:
    """One attention call: a slice of the packed sequence, the prefixes its tokens' tasks read (their keys side by
    side in front of the rows'), and for each token the columns it sees."""

    __slots__ = ("start", "end", "prefixes", "rows", "tasks", "trees", "mask")

    def __init__(self, start: int):
        self.start = self.end = start
        self.prefixes: list = []  # distinct prefixes (per-layer keys/values), in key order
        self.rows: list[Tensor] = []  # each row's real positions
        self.tasks: list[int] = []  # each row's index into ``prefixes`` (-1: no prefix)
        self.trees: list[Tensor | None] = []  # each row's tail tree (n, n), its last n tokens (None: causal)
        self.mask = None  # the additive mask laid out for the layers' dtype and heads, at the first layer

    def keys(self) -> int:
        return sum(_length(p) for p in self.prefixes)

    def fits(self, tokens: int, prefix) -> bool:
        new = prefix and not any(p is prefix for p in self.prefixes)
        return not self.rows or (
            self.end - self.start + tokens <= CHUNK_TOKENS
            and (not new or self.keys() + _length(prefix) <= SHARED_PREFIX_KEYS)
        )

    def add(self, pos: Tensor, prefix, tree: Tensor | None = None) -> None:
        if prefix and not any(p is prefix for p in self.prefixes):
            self.prefixes.append(prefix)
        self.tasks.append(next((i for i, p in enumerate(self.prefixes) if p is prefix), -1) if prefix else -1)
        self.rows.append(pos)
        self.trees.append(tree)
        self.end += len(pos)

    def allowed(self) -> Tensor:
        """(g, prefix keys + g): each token sees its own task's prefix and its own row's tokens up to itself; a
        row's tail (label words after it) sees the whole row and, among the tail, what its tree lets it."""
        dev = self.rows[0].device
        row = torch.cat([torch.full((len(p),), i, device=dev) for i, p in enumerate(self.rows)])
        idx = torch.arange(len(row), device=dev)
        own = (row[:, None] == row[None, :]) & (idx[None, :] <= idx[:, None])
        at = 0
        for pos, tree in zip(self.rows, self.trees, strict=True):
            if tree is not None:
                n, end = tree.shape[0], at + len(pos)
                own[end - n : end, end - n : end] = tree  # (its row's tokens it sees already: they come before)
            at += len(pos)
        lengths = [_length(p) for p in self.prefixes]
        cols = torch.zeros(len(row), sum(lengths), dtype=torch.bool, device=dev)
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        at = 0
        for pos, task in zip(self.rows, self.tasks, strict=True):
            if task >= 0:
                cols[at : at + len(pos), starts[task] : starts[task] + lengths[task]] = True
            at += len(pos)
        return torch.cat([cols, own], dim=1)


class Packed:
    """The rows of a pass as one sequence: ``order`` (N,) each packed token's index (row * width + position) in the
    padded (rows, width) layout ``valid`` marks, task after task; ``chunks`` the attention calls (``_Chunk``):
    consecutive rows of one task, or of several tasks with short prefixes."""

    def __init__(self, groups, valid: Tensor, trees: Tensor | None = None):
        """``trees`` (b, n, n): each row's last n columns are a tail (its label words' tokens) under that tree."""
        self.shape = valid.shape
        n = valid.shape[1]
        order, self.chunks = [], [_Chunk(0)]
        for rows, prefix in groups:
            for r in rows.tolist():
                pos = valid[r].nonzero()[:, 0]
                if not len(pos):
                    continue
                if not self.chunks[-1].fits(len(pos), prefix):
                    self.chunks.append(_Chunk(self.chunks[-1].end))
                self.chunks[-1].add(pos, prefix, None if trees is None else trees[r])
                order.append(r * n + pos)
        self.chunks = [c for c in self.chunks if c.rows]
        self.order = torch.cat(order) if order else torch.zeros(0, dtype=torch.long, device=valid.device)
        self.tail = -len(self.order) % PACK_ALIGN  # padding tokens after the real ones: attended by none

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

    def __call__(self, module, query, key, value, attention_mask, scaling):
        """A layer's attention (the plan a forward passes, ``core.attention.PLAN``): (output (1, N, h, hd), None)."""
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return self.attend(query, key, value, module.layer_idx, scale), None

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
            keys = [pk.to(key.dtype) for pk, _ in (p[layer] for p in c.prefixes)] + [key[:, :, s:e]]
            values = [pv.to(value.dtype) for _, pv in (p[layer] for p in c.prefixes)] + [value[:, :, s:e]]
            extra = -(c.keys() + g) % KEY_ALIGN  # masked zero keys: the CPU kernel's fast path
            if extra:
                keys.append(key.new_zeros(1, kv, extra, hd))
                values.append(value.new_zeros(1, kv, extra, hd))
            if c.mask is None or c.mask.dtype != query.dtype:
                c.mask = _lay_out(c.allowed(), extra, rep, query.dtype)
            o, _ = attend(q, torch.cat(keys, 2), torch.cat(values, 2), c.mask, scale)
            out[s:e] = o.view(h, g, hd).transpose(0, 1)
        return out[None]


def _lay_out(allowed: Tensor, extra: int, rep: int, dtype) -> Tensor:
    """The additive mask (1, 1, rep * g, keys + extra) of a chunk: 0 where ``allowed``, blocked elsewhere and on
    the alignment keys; repeated for the query heads laid side by side."""
    mask = torch.full((allowed.shape[0], allowed.shape[1] + extra), torch.finfo(dtype).min, dtype=dtype,
                      device=allowed.device)  # fmt: skip
    mask[:, : allowed.shape[1]].masked_fill_(allowed, 0)
    return mask.repeat(rep, 1)[None, None]
