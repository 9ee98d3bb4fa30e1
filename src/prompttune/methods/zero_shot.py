"""Zero-shot: the hard prompt alone. Soft slots stay empty and nothing trains."""

from __future__ import annotations

from torch import Tensor

from prompttune.core.template import SoftSlot
from prompttune.methods.base import SoftPromptMethod, register


@register
class ZeroShot(SoftPromptMethod):
    name = "zero-shot"

    def __init__(self, config, backbone, slots, init_context):
        super().__init__(config, backbone, slots, init_context)
        self._width = backbone.hidden_size
        self._dtype = backbone.embedding_matrix.dtype

    def slot_embeddings(self, slot: SoftSlot) -> Tensor:
        import torch

        return torch.zeros(0, self._width, dtype=self._dtype)
