"""A key/value cache for decoding that grows in place (``GrowingCache``).

transformers' ``DynamicCache`` concatenates every step's keys/values onto the cache, so each step copies the
whole cache of every layer (on the default decoder, 16 rows over a 400-token few-shot prefix: ~180 MB a step),
and glibc keeps the freed blocks: decoding 80 E2E rows over such a prefix left the process 1.1 GB larger.
Here each layer holds a buffer with room to spare; a step writes its keys/values into it and the model reads a
view of the filled part. A full buffer grows by ``ROOM`` positions at a time (one copy per ``ROOM`` steps).

Rows leave (``keep_rows``) and join (``join``) between steps for continuous batching (``generation/decode``);
``crop`` drops a step's last positions (drafted tokens that no row kept: ``generation/lookup``).
``stack_left_padded`` lays several prefixes out as one batch (mixed-task passes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.cache_utils import DynamicCache, DynamicLayer

from prompttune.core.backbone import KV

ROOM = 64  # positions a buffer grows by


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values live in a buffer with room to grow: ``update`` writes in place."""

    def __init__(self) -> None:
        super().__init__()
        self._k: Tensor | None = None  # (batch, kv heads, capacity, head dim)
        self._v: Tensor | None = None
        self.length = 0

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, t = self.length, key_states.shape[-2]
        if self._k is None or n + t > self._k.shape[-2]:
            self._fill(self._used(), n + t + ROOM, key_states, value_states)
        self._k[..., n : n + t, :] = key_states
        self._v[..., n : n + t, :] = value_states
        self._set_length(n + t)
        return self.keys, self.values

    def _used(self) -> tuple[Tensor, Tensor] | None:
        return None if self._k is None else (self._k[..., : self.length, :], self._v[..., : self.length, :])

    def _fill(self, used: tuple[Tensor, Tensor] | None, capacity: int, like_k: Tensor, like_v: Tensor) -> None:
        """A new buffer of ``capacity`` positions holding ``used`` (the keys/values so far) at its start."""
        b, h, _, d = like_k.shape if used is None else used[0].shape
        self._k = like_k.new_empty(b, h, capacity, d)
        self._v = like_v.new_empty(b, h, capacity, like_v.shape[-1] if used is None else used[1].shape[-1])
        if used is not None:
            self._k[..., : self.length, :] = used[0]
            self._v[..., : self.length, :] = used[1]

    def _set_length(self, n: int) -> None:
        self.length = n
        self.keys, self.values = self._k[..., :n, :], self._v[..., :n, :]

    def load(self, keys: Tensor, values: Tensor) -> None:
        """Hold exactly these keys/values (and room to grow)."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        self._k = self._v = None
        self.length = 0
        self.update(keys, values)

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` positions (transformers' convention: a negative count); the buffer
        keeps them as room."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop: give a negative count of positions to remove, not {tokens_to_remove}")
        self._set_length(max(0, self.length + tokens_to_remove))

    def keep_rows(self, rows: Tensor) -> None:
        self._k, self._v = self._k[rows.to(self._k.device)], self._v[rows.to(self._v.device)]
        self._set_length(self.length)


class GrowingCache(DynamicCache):
    """A ``DynamicCache`` of ``GrowingLayer``s, started from per-layer keys/values (e.g. a task's prefix expanded
    over ``batch`` rows: copied once into the buffers)."""

    grows_in_place = True  # its layers' ``update`` writes into their buffers (``core.decode_step`` relies on it)

    def __init__(self, kv: list[tuple[Tensor, Tensor]] | None, batch: int, config) -> None:
        super().__init__(config=config)
        self.layers = [GrowingLayer() for _ in self.layers]
        for layer, (k, v) in zip(self.layers, kv or [], strict=bool(kv)):
            layer.load(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))

    def kv(self) -> list[tuple[Tensor, Tensor]]:
        return [(layer.keys, layer.values) for layer in self.layers]

    def keep_rows(self, rows: Tensor) -> None:
        """Only these rows (indices into the batch) stay."""
        for layer in self.layers:
            layer.keep_rows(rows)

    @classmethod
    def join(cls, a: GrowingCache, b: GrowingCache, config) -> GrowingCache:
        """a's rows then b's, each left-padded with zeros to the longer one's length (the caller masks them)."""
        width = max(a.get_seq_length(), b.get_seq_length())
        kv = [
            tuple(
                torch.cat([F.pad(t, (0, 0, width - t.shape[-2], 0)) for t in pair]) for pair in zip(la, lb, strict=True)
            )
            for la, lb in zip(a.kv(), b.kv(), strict=True)
        ]
        return cls(kv, kv[0][0].shape[0], config)


def stack_left_padded(prefixes: list[KV | None], width: int, repeats: list[int] | None = None) -> KV:
    """Per-layer (rows, kv_heads, width, head_dim) keys/values: each prefix (batch 1, or None: nothing) right-aligned
    with zeros before it (to be masked out), repeated ``repeats[i]`` times (default once). Differentiable: training
    stacks prefixes that carry gradients (``multitask.joint``), the server stacks cached ones (``serve.mixed``)."""
    like = next((p for p in prefixes if p), None)
    if like is None:
        return []
    repeats = repeats or [1] * len(prefixes)
    out = []
    for layer in range(len(like)):
        pair = []
        for j in (0, 1):
            ref = like[layer][j]
            blank = ref.new_zeros(1, ref.shape[1], width, ref.shape[3])
            parts = [
                (F.pad(p[layer][j], (0, 0, width - p[layer][j].shape[2], 0)) if p else blank).expand(r, -1, -1, -1)
                for p, r in zip(prefixes, repeats, strict=True)
            ]
            pair.append(torch.cat(parts))
        out.append((pair[0], pair[1]))
    return out
