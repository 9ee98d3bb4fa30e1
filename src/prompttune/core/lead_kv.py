"""Keys/values of the constant hard text that begins a prefix (system text, chat header, up to the first soft
slot), computed once per backbone and shared by every task whose prefix starts with the same tokens.

Such text depends on no parameter, so a thousand soft prompts trained from one template share its keys/values:
``lead_kv`` hands each of them the same ``Lead`` while any of them holds it (weak references; each method keeps
the last one it used, so a training loop does not compute it again on every step). A task's stored prefix
(``prefix.PrefixModel.cached_prefix``) keeps only what follows the lead, plus a reference to it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

import torch

from prompttune.core.backbone import KV


class Lead:
    """The keys/values of one lead text on one backbone (read-only: every holder shares the tensors)."""

    __slots__ = ("ids", "kv", "__weakref__")

    def __init__(self, ids: tuple[int, ...], kv: KV):
        self.ids, self.kv = ids, kv

    def __len__(self) -> int:
        return len(self.ids)


_lock = threading.Lock()


def _shared(backbone) -> weakref.WeakValueDictionary:
    """The backbone's own table (held on it, so it goes with it): lead token ids -> Lead, weakly."""
    found = backbone.__dict__.get("_leads")
    if found is None:
        found = backbone.__dict__["_leads"] = weakref.WeakValueDictionary()
    return found


def lead_kv(backbone, ids: tuple[int, ...], compute: Callable[[], KV]) -> Lead:
    """The shared ``Lead`` for ``ids`` on ``backbone``; ``compute()`` (run without gradients) makes it once.
    Whoever uses it holds it (a method keeps its last one): it lives while any holder does."""
    with _lock:
        found = _shared(backbone).get(ids)
    if found is not None and found.kv[0][0].device == torch.device(backbone.device):
        return found
    with torch.no_grad():
        made = Lead(ids, [(k.detach(), v.detach()) for k, v in compute()])
    with _lock:
        shared = _shared(backbone)
        found = shared.get(ids)
        if found is None or found.kv[0][0].device != made.kv[0][0].device:  # keep one, unless it moved device
            shared[ids] = found = made
    return found


def starts_with(kv: KV, lead: Lead) -> bool:
    """Whether ``kv``'s first positions are ``lead``'s keys/values (the same values, bit for bit)."""
    n = len(lead)
    if not kv or len(kv) != len(lead.kv) or kv[0][0].shape[2] <= n:
        return False
    return all(
        torch.equal(k[:, :, :n], lk) and torch.equal(v[:, :, :n], lv)
        for (k, v), (lk, lv) in zip(kv, lead.kv, strict=True)
    )


def kv_bytes(kv: KV | None) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv or [])


class StoredPrefix:
    """A task's cached prefix between batches: the shared lead it starts with (if it does) and a copy of the
    rest, optionally kept smaller (``store_dtype``, the server's ``--prefix-cache-dtype``: bfloat16 / float16,
    or int8 with one float32 scale per layer, token and head, the absolute maximum over its head's channels
    mapped to 127). ``kv()`` gives the whole prefix in the dtype it was computed in: the stored keys/values
    themselves when nothing was split or converted, else a fresh copy (a prefix's worth of copying per batch)."""

    __slots__ = ("lead", "own", "scales", "dtype")

    def __init__(self, full: KV, lead: Lead | None = None, store_dtype: torch.dtype | None = None):
        if lead is not None and not starts_with(full, lead):
            lead = None
        n = len(lead) if lead is not None else 0
        self.dtype = full[0][0].dtype if full else None
        self.lead, self.scales = lead, None
        convert = store_dtype is not None and store_dtype != self.dtype and bool(full)
        own = [(k[:, :, n:], v[:, :, n:]) for k, v in full] if n else full
        if not convert:  # a copy when split, never a view: a view would keep the whole computed prefix alive
            self.own = _one_block(own, None) if n else own
        elif store_dtype == torch.int8:
            scales = [(_scale(k), _scale(v)) for k, v in own]
            scaled = [(k / sk, v / sv) for (k, v), (sk, sv) in zip(own, scales, strict=True)]
            self.own = _one_block(scaled, torch.int8, rounded=True)
            self.scales = _one_block(scales, None)
        else:
            self.own = _one_block(own, store_dtype)

    @property
    def nbytes(self) -> int:
        """Bytes this task holds on its own (a shared lead is counted by no task)."""
        return kv_bytes(self.own) + kv_bytes(self.scales)

    def kv(self) -> KV:
        own = self.own
        if self.scales is not None:
            pairs = zip(own, self.scales, strict=True)
            own = [((k * sk).to(self.dtype), (v * sv).to(self.dtype)) for (k, v), (sk, sv) in pairs]
        elif own and own[0][0].dtype != self.dtype:
            own = [(k.to(self.dtype), v.to(self.dtype)) for k, v in own]
        if self.lead is None:
            return own
        return [
            (torch.cat([lk, k], dim=2), torch.cat([lv, v], dim=2))
            for (lk, lv), (k, v) in zip(self.lead.kv, own, strict=True)
        ]


def _scale(x: torch.Tensor) -> torch.Tensor:
    """Per (token, head) int8 scale of keys or values (..., tokens, channels): their absolute maximum / 127."""
    return (x.float().abs().amax(dim=-1, keepdim=True) / 127).clamp(min=1e-12)


def _one_block(kv: KV, dtype: torch.dtype | None, rounded: bool = False) -> KV:
    """A copy of ``kv`` (in ``dtype``; ``rounded``: to the nearest whole number first) in one allocation,
    viewed per layer: one block per task rather than two small tensors per layer, which, among hundreds of
    tasks, leave the heap fragmented (measured: ~40 KB of resident memory per task less)."""
    k0 = kv[0][0]
    if any(k.shape != k0.shape or v.shape != k0.shape for k, v in kv):  # layers of other shapes: one each
        return [(_cast(k, dtype, rounded).clone(), _cast(v, dtype, rounded).clone()) for k, v in kv]
    block = torch.empty((len(kv), 2, *k0.shape), dtype=dtype or k0.dtype, device=k0.device)
    for i, (k, v) in enumerate(kv):
        block[i, 0].copy_(_cast(k, dtype, rounded))
        block[i, 1].copy_(_cast(v, dtype, rounded))
    return [(block[i, 0], block[i, 1]) for i in range(len(kv))]


def _cast(x: torch.Tensor, dtype: torch.dtype | None, rounded: bool) -> torch.Tensor:
    if rounded:
        x = x.round().clamp(-127, 127)
    return x if dtype is None else x.to(dtype)
