"""PrefixModel: what every read-out shares — a frozen backbone, a soft-prompt method, and the task's constant
prefix (hard-text token ids and soft slots, in order) turned into per-layer keys/values.

Training recomputes the prefix with gradients on every step (``prefix_kv``); inference computes it once and
reuses it for every batch (``cached_prefix``) until the parameters change (``clear_cache``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prompttune.core.backbone import KV, Backbone
from prompttune.core.template import SoftSlot
from prompttune.methods import SoftPromptMethod


class PrefixModel(nn.Module):
    backbone: Backbone
    method: SoftPromptMethod
    segments: list[Tensor | SoftSlot]  # the constant prefix: token ids and soft slots

    def __init__(self) -> None:
        super().__init__()
        self._cached_prefix: KV | None = None

    def prefix_kv(self) -> KV:
        """The constant prefix's keys/values, recomputed (with gradients) on every call."""
        if not self.segments:
            return []
        return self.method.prefix_kv(self.backbone, self.segments)

    def cached_prefix(self) -> KV:
        """The prefix's keys/values for inference: computed once, reused for every batch."""
        if self._cached_prefix is None:
            with torch.no_grad():
                self._cached_prefix = [(k.detach(), v.detach()) for k, v in self.prefix_kv()]
        return self._cached_prefix

    def clear_cache(self) -> None:
        self._cached_prefix = None
