"""The method interface and registry."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch
from torch import Tensor, nn

from prompttune.core.backbone import KV, Backbone
from prompttune.core.errors import PromptTuneError
from prompttune.core.lead_kv import Lead, lead_kv
from prompttune.core.template import SoftSlot

METHODS: dict[str, type[SoftPromptMethod]] = {}


def register(cls: type[SoftPromptMethod]) -> type[SoftPromptMethod]:
    METHODS[cls.name] = cls
    return cls


@dataclass
class MethodConfig:
    """Settings every method shares; a method's own config subclasses this."""

    num_virtual_tokens: int = 16

    @classmethod
    def from_dict(cls, d: dict) -> MethodConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise PromptTuneError(f"method config: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def split_lead(segments: list[Tensor | SoftSlot]) -> tuple[list, list]:
    """(the hard text before the first soft slot, the rest from that slot on)."""
    first_soft = next((i for i, s in enumerate(segments) if isinstance(s, SoftSlot)), len(segments))
    return segments[:first_soft], segments[first_soft:]


class SoftPromptMethod(nn.Module):
    """Turns trainable parameters into the task's constant prefix (as per-layer keys/values).

    The default hooks suit methods whose parameters are input embeddings placed at the template's
    soft slots (prompt tuning); methods that act on every layer override ``prefix_kv``.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    default_lr: ClassVar[float] = 0.01  # the peak learning rate that suits the method when the user gives none
    peft_type: ClassVar[str | None] = None  # the PEFT type it exports as (``table()`` is the tensor); None: none

    def __init__(self, config: MethodConfig, backbone: Backbone, slots: list[SoftSlot], init_context: dict):
        super().__init__()
        self.config = config
        self.slots = slots

    # --- hooks ------------------------------------------------------------------------------
    def slot_embeddings(self, slot: SoftSlot) -> Tensor:
        """The (slot.size, d) input embeddings standing at a soft slot."""
        raise NotImplementedError

    def prefix_embeddings(self, backbone: Backbone, segments: list[Tensor | SoftSlot]) -> Tensor | None:
        """(1, n, d): hard-text embeddings with the soft slots filled in; None when there is nothing."""
        parts = [self.slot_embeddings(s) if isinstance(s, SoftSlot) else backbone.embed(s) for s in segments]
        parts = [p.to(backbone.embedding_matrix.dtype) for p in parts if p.shape[0]]
        return torch.cat(parts, dim=0)[None] if parts else None

    def prefix_kv(self, backbone: Backbone, segments: list[Tensor | SoftSlot]) -> KV:
        """The constant prefix's per-layer keys/values (with gradients while training).

        Hard text before the first soft slot (system text, chat header) does not depend on any
        parameter: its keys/values are computed once and the rest of the prefix continues from them.
        """
        past, embeds = self._prefix_inputs(backbone, segments)
        if embeds is None:  # nothing after the constant text (e.g. zero-shot's empty slots)
            return past or []
        return backbone.prefix_kv(embeds, past=past)

    def prefix_inputs(self, backbone: Backbone, segments: list[Tensor | SoftSlot]) -> tuple[KV | None, Tensor | None]:
        """What ``prefix_kv`` runs: (the constant lead's keys/values or None, the (1, n, d) embeddings that follow
        it or None), so several tasks' prefixes can run as one batch (``multitask.joint``). A method with its own
        ``prefix_kv`` runs something else: it raises ``NotImplementedError`` here unless it says what."""
        if type(self).prefix_kv is not SoftPromptMethod.prefix_kv:
            raise NotImplementedError(f"{type(self).__name__} computes its prefix its own way")
        return self._prefix_inputs(backbone, segments)

    def _prefix_inputs(self, backbone: Backbone, segments: list[Tensor | SoftSlot]) -> tuple[KV | None, Tensor | None]:
        lead, rest = split_lead(segments)
        past = self._lead_kv(backbone, lead) if lead and rest else None
        return past, self.prefix_embeddings(backbone, rest if past is not None else segments)

    def _lead_kv(self, backbone: Backbone, lead: list[Tensor]) -> KV:
        return self.shared_lead(backbone, lead).kv

    def shared_lead(self, backbone: Backbone, lead: list[Tensor]) -> Lead:
        """The keys/values of hard text alone (no soft slot in it), shared by every task on ``backbone`` whose
        prefix starts with the same tokens (``core.lead_kv``)."""
        ids = tuple(t for seg in lead for t in seg.tolist())
        owner, held = self.__dict__.get("_lead", (None, None))
        if owner != id(backbone) or held.ids != ids or held.kv[0][0].device != torch.device(backbone.device):
            held = lead_kv(backbone, ids, lambda: backbone.prefix_kv(self.prefix_embeddings(backbone, lead)))
            self.__dict__["_lead"] = (id(backbone), held)  # kept while this method lives: asked for every step
        return held

    def lead_of(self, backbone: Backbone, segments: list[Tensor | SoftSlot]) -> Lead | None:
        """The shared lead ``prefix_kv`` starts from for these segments (None: it starts from none). A method
        whose ``prefix_kv`` puts anything before the hard text (prefix tuning) must not claim one; the stored
        prefix checks that the keys/values really begin with it before sharing them."""
        lead, rest = split_lead(segments)
        return self.shared_lead(backbone, lead) if lead and rest else None

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named groups of trainable parameters; the Trainer gives each its own learning rate (``lr_scales``)."""
        return {"prompt": [p for p in self.parameters() if p.requires_grad]}

    @property
    def lr_scales(self) -> dict[str, float]:
        """{group: factor}: that group trains at factor x the learning rate (default: every group at 1x)."""
        return {}

    def table(self) -> Tensor | None:
        """The (n_virtual, width) tensor another library reads (PEFT's prompt embeddings); None when there is none."""
        return None

    def trainable_state(self) -> dict[str, Tensor]:
        """Tensors to save (and to restore to resume training)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        self.load_state_dict(state)


def init_token_ids(config, backbone: Backbone, total: int, ctx: dict) -> Tensor | None:
    """Token ids whose embeddings start ``total`` virtual tokens (``config.init``); None for random init.

    labels: the label words' tokens, then frequent words; vocab: frequent words (the 5,000 first ids);
    text: ``config.init_text`` repeated. Shared by every method that starts from real token embeddings.
    """
    gen = ctx.get("generator")
    vocab = min(5000, backbone.embedding_matrix.shape[0])
    sampled = torch.randint(0, vocab, (total,), generator=gen)
    if config.init == "random":
        return None
    if config.init == "vocab":
        return sampled
    if config.init == "text":
        words = backbone.tokenize(config.init_text)
    else:  # labels
        words = [t for w in ctx.get("label_words", []) for t in backbone.tokenize(" " + w)]
    if not words:
        return sampled
    words = torch.tensor(words)
    if config.init == "text":
        return words.repeat((total + len(words) - 1) // len(words))[:total]
    out = sampled.clone()
    out[: min(total, len(words))] = words[:total]
    return out


def build_method(name: str, config: dict, backbone: Backbone, slots: list[SoftSlot], init_context: dict):
    if name not in METHODS:
        raise PromptTuneError(f"--method {name}: unknown method; choose one of {', '.join(sorted(METHODS))}.")
    cls = METHODS[name]
    return cls(cls.config_class.from_dict(config), backbone, slots, init_context)
