"""Prompt tuning (Lester et al. 2021): N trainable input embeddings at the template's soft slots.

Init: ``vocab`` (embeddings of tokens sampled from the 5,000 most frequent ids, Lester's best),
``text`` (the embeddings of a given string, cycled to length), ``labels`` (the label words' token
embeddings, then vocab), ``random`` (normal with the embedding matrix's std).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prompttune.core.errors import PromptTuneError
from prompttune.core.template import SoftSlot
from prompttune.methods.base import MethodConfig, SoftPromptMethod, init_token_ids, register

INITS = ("vocab", "text", "labels", "random")


@dataclass
class PromptTuningConfig(MethodConfig):
    init: str = "labels"
    init_text: str | None = None
    # Residual reparameterization (after Razdaibiedina et al. 2023): train P + MLP(P), the MLP's output layer
    # starting at zero so the init is kept; 0 switches it off. Inference reads the table it produces.
    reparam_hidden: int = 0

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise PromptTuneError(f"--init {self.init}: unknown; choose one of {', '.join(INITS)}.")
        if self.init == "text" and not self.init_text:
            raise PromptTuneError("--init text needs --init-text 'some words' to take the embeddings from.")


@register
class PromptTuning(SoftPromptMethod):
    name = "prompt-tuning"
    config_class = PromptTuningConfig
    peft_type = "PROMPT_TUNING"  # how peft_interop exports it: table() is PEFT's prompt_embeddings

    def __init__(self, config: PromptTuningConfig, backbone, slots: list[SoftSlot], init_context: dict):
        super().__init__(config, backbone, slots, init_context)
        total = sum(s.size for s in slots)
        if total == 0:
            raise PromptTuneError("prompt tuning: the template has no [soft] slot to train.")
        emb = backbone.embedding_matrix.detach()
        ids = init_token_ids(config, backbone, total, init_context)
        if ids is None:
            init = torch.randn(total, emb.shape[1], generator=init_context.get("generator")) * float(emb.std())
        else:
            init = emb[ids].clone()
        self.embeddings = nn.Parameter(init.float())  # (n_virtual, d)
        d = emb.shape[1]
        self.reparam = None
        if config.reparam_hidden:
            self.reparam = nn.Sequential(
                nn.Linear(d, config.reparam_hidden), nn.ReLU(), nn.Linear(config.reparam_hidden, d)
            )
            nn.init.zeros_(self.reparam[2].weight)
            nn.init.zeros_(self.reparam[2].bias)
        self._offsets = {}
        start = 0
        for s in slots:
            self._offsets[s.index] = (start, start + s.size)
            start += s.size

    def table(self) -> Tensor:
        """The (n_virtual, d) virtual-token embeddings inference uses."""
        if self.reparam is None:
            return self.embeddings
        return self.embeddings + self.reparam(self.embeddings)

    def load_table(self, table: Tensor) -> None:
        """Set the virtual-token embeddings inference reads (e.g. imported from PEFT)."""
        if self.reparam is not None or type(self).table is not PromptTuning.table:
            raise PromptTuneError(f"{self.name}: its table comes from an encoder; load the encoder's state instead.")
        with torch.no_grad():
            self.embeddings.copy_(table)

    def slot_embeddings(self, slot: SoftSlot) -> Tensor:
        start, end = self._offsets[slot.index]
        return self.table()[start:end]
