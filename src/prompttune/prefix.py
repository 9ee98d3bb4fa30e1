"""PrefixModel: what every read-out shares — a frozen backbone, a soft-prompt method, and the task's constant
prefix (hard-text token ids and soft slots, in order) turned into per-layer keys/values.

Training recomputes the prefix with gradients on every step (``prefix_kv``); inference computes it once and
reuses it for every batch (``cached_prefix``) until the parameters change (``clear_cache``). A step taken in
micro-batches computes it once too (``prefix_once``): every part reads the same keys/values, and their
gradients, summed over the parts, run back through the prefix once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import Tensor, nn

from prompttune.core.backbone import KV, Backbone
from prompttune.core.lead_kv import StoredPrefix
from prompttune.core.template import SoftSlot
from prompttune.methods import SoftPromptMethod


class PrefixModel(nn.Module):
    backbone: Backbone
    method: SoftPromptMethod
    segments: list[Tensor | SoftSlot]  # the constant prefix: token ids and soft slots

    prefix_store_dtype: torch.dtype | None = None  # keep the cached prefix in this dtype (None: as computed)
    mixes = True  # its rows can join the server's mixed batches over a cached prefix (``serve.mixed``)

    def __init__(self) -> None:
        super().__init__()
        self._cached_prefix: StoredPrefix | None = None
        self._step_prefix: KV | None = None  # inside ``prefix_once``: the keys/values every part reads

    # --- templates with soft slots (label-word and generation read-outs) ---------------------------------------
    def index_row_soft_tokens(self) -> None:
        """Soft tokens in the row part (after the first field) are written into token ids as -(1 + k): entry k
        of ``self._row_soft`` (slot, position in the slot). Needs ``self.compiled`` and ``self.method``."""
        self._row_soft: list[tuple[SoftSlot, int]] = []
        self._row_code: dict[int, int] = {}
        for slot in self.compiled.row_slots:
            width = self.method.slot_embeddings(slot).shape[0]  # 0 for methods without soft tokens
            self._row_code[slot.index] = len(self._row_soft)
            self._row_soft += [(slot, j) for j in range(width)]

    def tokenize_prefix(self) -> list[Tensor | SoftSlot]:
        """The compiled template's constant prefix as token ids and soft slots (bos first where the model has one)."""
        segments: list[Tensor | SoftSlot] = []
        bos = self.backbone.bos_ids
        for i, seg in enumerate(self.compiled.prefix):
            if isinstance(seg, SoftSlot):
                segments.append(seg)
            else:
                segments.append(torch.tensor((bos if i == 0 else []) + self.backbone.tokenize(seg)))
        if not segments or isinstance(segments[0], SoftSlot) and bos:
            segments.insert(0, torch.tensor(bos))
        return [s for s in segments if isinstance(s, SoftSlot) or len(s)]

    def row_ids(self, text: str) -> list[int]:
        """Token ids of a rendered row, soft slots written as negative codes."""
        if not self._row_soft and not self.compiled.row_slots:
            return self.backbone.tokenize(text)
        ids: list[int] = []
        for part in self.compiled.split_row(text):
            if isinstance(part, SoftSlot):
                start = self._row_code[part.index]
                width = sum(1 for s, _ in self._row_soft if s.index == part.index)
                ids += [-(1 + start + j) for j in range(width)]
            else:
                ids += self.backbone.tokenize(part)
        return ids

    def row_inputs(self, ids: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """(input_ids, None), or (None, inputs_embeds) when rows carry soft tokens (negative ids)."""
        ids = ids.to(self.backbone.device)
        soft = ids < 0
        if not soft.any():
            return ids, None
        embeds = self.backbone.embed(ids.clamp(min=0))
        table = torch.cat([self.method.slot_embeddings(s)[j : j + 1] for s, j in self._row_soft]).to(embeds.dtype)
        embeds = torch.where(soft[..., None], table[(-ids - 1).clamp(min=0, max=len(table) - 1)], embeds)
        return None, embeds

    # --- the constant prefix's keys/values ---------------------------------------------------------------------
    def prefix_kv(self) -> KV:
        """The constant prefix's keys/values, recomputed (with gradients) on every call (inside ``prefix_once``:
        the step's one computation)."""
        if self._step_prefix is not None:
            return self._step_prefix
        if not self.segments:
            return []
        return self.method.prefix_kv(self.backbone, self.segments)

    @contextmanager
    def prefix_once(self) -> Iterator[None]:
        """A training step in parts: ``prefix_kv`` is computed here once, and every part reads it as leaves of
        its own graph, so a part's backward stops at the prefix and frees the part's activations. On a normal
        exit the gradients the parts left on those leaves run back through the prefix in one backward pass:
        the same gradient as recomputing the prefix for each part (the sum over parts), at the price of one."""
        if self._step_prefix is not None:  # nested: the outer step owns the prefix
            yield
            return
        with step_prefixes([self], [self.prefix_kv()]):
            yield

    @property
    def in_step(self) -> bool:
        """Inside ``prefix_once`` / ``step_prefixes``: ``prefix_kv`` returns the step's prefix."""
        return self._step_prefix is not None

    def cached_prefix(self) -> KV:
        """The prefix's keys/values for inference: computed once, reused for every batch. Held as a
        ``StoredPrefix``: the hard text it starts with is shared with every task that starts the same way."""
        if self._cached_prefix is None:
            with torch.no_grad():
                full = [(k.detach(), v.detach()) for k, v in self.prefix_kv()]
                lead = self.method.lead_of(self.backbone, self.segments) if self.segments else None
            self._cached_prefix = StoredPrefix(full, lead, self.prefix_store_dtype)
        return self._cached_prefix.kv()

    def cached_prefix_bytes(self) -> int:
        """Bytes the cached prefix holds on its own (0 when none is cached)."""
        return self._cached_prefix.nbytes if self._cached_prefix is not None else 0

    def clear_cache(self) -> None:
        self._cached_prefix = None


def step_prefix_once(objective, batch: list[int]) -> AbstractContextManager:
    """A training step in parts computes its prefix once: the objective's own ``prefix_once(batch)`` (a pack: each
    task of the batch), else its model's ``prefix_once()``, else nothing to share."""
    if hasattr(objective, "prefix_once"):
        return objective.prefix_once(batch)
    once = getattr(getattr(objective, "model", None), "prefix_once", None)
    return once() if once is not None else nullcontext()


@contextmanager
def step_prefixes(models: list[PrefixModel], prefixes: list[KV]) -> Iterator[None]:
    """Each model's prefix for a step in parts is the given one (computed once; for several models possibly in one
    pass): every part reads it as leaves of its own graph. On a normal exit the gradients the parts left on the
    leaves run back through all the prefixes in one backward pass (one pass may have made them all)."""
    leaves = [[tuple(t.detach().requires_grad_(t.requires_grad) for t in kv) for kv in full] for full in prefixes]
    for model, mine in zip(models, leaves, strict=True):
        model._step_prefix = mine
    try:
        yield
    finally:
        for model in models:
            model._step_prefix = None
    outputs, grads = [], []
    for full, mine in zip(prefixes, leaves, strict=True):
        for kv, kv_leaves in zip(full, mine, strict=True):
            for t, leaf in zip(kv, kv_leaves, strict=True):
                if t.requires_grad and leaf.grad is not None:
                    outputs.append(t)
                    grads.append(leaf.grad)
    if outputs:
        torch.autograd.backward(outputs, grads)
