"""HeadModel: a frozen backbone, a soft-prompt method and a trainable read-out head.

Rows are run after the method's prefix like PromptModel does, but every position's hidden state is
returned (for token and span heads), not only the label tokens' scores.

What is cached depends on what the method provides, never on its name:
- a per-layer KV prefix (prefix tuning, deep prompts) is constant for any backbone: computed once at
  inference (and once per training step, at batch size 1);
- soft INPUT tokens (prompt tuning) are a constant prefix only for a decoder, where they cannot see
  the row. An encoder's attention is bidirectional, so their hidden states depend on the row: there
  they are placed right after [CLS] inside every row's own pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from prompttune.core.backbone import KV, Backbone
from prompttune.core.template import SoftSlot
from prompttune.methods import SoftPromptMethod
from prompttune.prefix import PrefixModel


class TrainableParts(nn.Module):
    """The method's and the head's parameters as one module: what the Trainer trains, averages and saves."""

    def __init__(self, method: SoftPromptMethod, head: nn.Module):
        super().__init__()
        self.method = method
        self.head = head

    def trainable_state(self) -> dict[str, Tensor]:
        state = {f"method.{k}": v for k, v in self.method.trainable_state().items()}
        return state | {f"head.{k}": v.detach().clone() for k, v in self.head.state_dict().items()}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        self.method.load_trainable_state({k[7:]: v for k, v in state.items() if k.startswith("method.")})
        self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Prompts and head train at different learning rates (P-tuning v2: ~1e-2 vs ~1e-3)."""
        return self.method.parameter_groups() | {"head": [p for p in self.head.parameters() if p.requires_grad]}

    @property
    def lr_scales(self) -> dict[str, float]:
        return self.method.lr_scales


def input_token_count(method: SoftPromptMethod, slot: SoftSlot) -> int:
    """How many soft input embeddings the method puts at a slot (0 for methods acting on keys/values only)."""
    try:
        return int(method.slot_embeddings(slot).shape[0])
    except NotImplementedError:
        return 0


class HeadModel(PrefixModel):
    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        method_factory: Callable[[list[SoftSlot], dict], SoftPromptMethod],
        num_virtual_tokens: int,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.slot = SoftSlot(0, num_virtual_tokens)
        self.method = method_factory([self.slot], {"generator": generator, "label_words": []})
        self.head = head
        self.trainable = TrainableParts(self.method, head)
        self.trainable.to(backbone.device)
        encoder = backbone.kind == "encoder"
        self.inline_soft = input_token_count(self.method, self.slot) if encoder else 0
        segments: list[Tensor | SoftSlot] = [] if self.inline_soft else [self.slot]
        if not encoder and backbone.bos_ids:
            segments.insert(0, torch.tensor(backbone.bos_ids))
        self.segments = segments
        tok = backbone.tokenizer
        self.open_ids = [tok.cls_token_id] if encoder and tok.cls_token_id is not None else []
        self.sep_ids = [tok.sep_token_id] if encoder and tok.sep_token_id is not None else []

    @property
    def max_row_length(self) -> int:
        """Tokens a row may have (specials included): the model's positions less the inline soft tokens."""
        limit = self.backbone.max_length - self.inline_soft
        if self.backbone.kind == "decoder":
            limit -= sum(s.size if isinstance(s, SoftSlot) else len(s) for s in self.segments)
        return limit

    # --- running rows -------------------------------------------------------------------------
    def hidden(self, batch: list[list[int]], prefix: KV) -> Tensor:
        """(b, t, d) float32 hidden states of right-padded rows, aligned with the ids, on the backbone's device."""
        b, width = len(batch), max(len(x) for x in batch)
        pad = self.backbone.tokenizer.pad_token_id or 0
        ids = torch.full((b, width), pad, dtype=torch.long)
        mask = torch.zeros(b, width, dtype=torch.long)
        for i, x in enumerate(batch):
            ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        embeds = None
        n = self.inline_soft
        if n:  # soft tokens right after the row's first token ([CLS]), in the row's own pass
            emb = self.backbone.embed(ids)
            soft = self.method.slot_embeddings(self.slot).to(emb.dtype)[None].expand(b, -1, -1)  # (b, n, d)
            embeds = torch.cat([emb[:, :1], soft, emb[:, 1:]], dim=1)
            mask = torch.cat([mask[:, :1], torch.ones(b, n, dtype=torch.long), mask[:, 1:]], dim=1)
            ids = None
        p = prefix[0][0].shape[2] if prefix else 0
        start = p if self.backbone.kind == "decoder" else 0  # an encoder's rows keep their own positions
        positions = (start + torch.arange(mask.shape[1]))[None].expand(b, -1)
        attention = torch.cat([torch.ones(b, p, dtype=torch.long), mask], dim=1)
        h = self.backbone.run(ids, attention, positions, prefix, inputs_embeds=embeds)
        if n:
            h = torch.cat([h[:, :1], h[:, 1 + n :]], dim=1)
        return h.float()
