"""Prefix tuning (Li & Liang 2021): trainable keys and values prepended at every layer.

The prefix is a table of ``num_virtual_tokens`` rows, each holding every layer's key and value for every
key/value head: (n, layers * 2 * kv_heads * head_dim), laid out as PEFT lays out ``past_key_values``
(layer, then key/value, then head, then head_dim), so it exports to PEFT as it is. Its shape comes from
``Backbone.kv_layout``; under grouped-query attention (the default decoder: 9 query heads, 3 KV heads) the
table only holds the KV heads.

Reparameterization (``prefix_hidden`` > 0, the default): the table is ``start + MLP(embedding)``, an MLP
(Linear -> tanh -> Linear) over a small (n, hidden_size) embedding, as in the paper; its output layer starts
at zero so training starts from ``start``, the keys/values of real tokens (``init``: the label words, then
words sampled from the most frequent ones, as prompt tuning's init; ``random``: noise of the same scale).
On a decoder ``random`` puts keys/values the model never produces in front of everything, where its
attention sink belongs: SmolLM2-135M's hidden states then lose their meaning (cosine 0.04 to the unprompted
states, against 0.97 with ``vocab``), and SQuAD training never recovered; a warning says so. On an encoder
it is harmless (cosine 0.93). Li & Liang found initializing with real activations and optimizing through
an MLP both stabilize training.
``prefix_hidden 0`` trains the table directly (what P-tuning v2 does by default). After training the MLP is
collapsed into the table used at inference; the embedding and MLP are saved too, for ``--resume``.

Template soft slots: the KV prefix comes first, before all the template's text, and takes the place of the
template's soft slots: every ``[soft]`` / ``[soft:N]`` slot, in the constant prefix or in the row (e.g. the
built-in templates' ``[soft:4]`` before the answer), gets width 0, so the template's hard text and the row
read exactly as written after the prefix (PEFT's layout, which is why every template exports to PEFT). The
prefix length is ``num_virtual_tokens``, whatever size the template's slots give.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prompttune.core.backbone import KV, Backbone
from prompttune.core.errors import PromptTuneError
from prompttune.core.template import SoftSlot
from prompttune.methods.base import MethodConfig, SoftPromptMethod, init_token_ids, register
from prompttune.methods.lookup_table import CollapsedTable
from prompttune.methods.prompt_tuning import INITS


@dataclass
class PrefixTuningConfig(MethodConfig):
    prefix_hidden: int = 512  # the reparameterization MLP's width; 0: train the table directly
    init: str = "labels"
    init_text: str | None = None

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:
            raise PromptTuneError(f"num_virtual_tokens {self.num_virtual_tokens}: must be at least 1.")
        if self.prefix_hidden < 0:
            raise PromptTuneError(f"prefix_hidden {self.prefix_hidden}: must be 0 (no MLP) or a positive width.")
        if self.init not in INITS:
            raise PromptTuneError(f"init {self.init}: unknown; choose one of {', '.join(INITS)}.")
        if self.init == "text" and not self.init_text:
            raise PromptTuneError("init text needs init_text='some words' to take the activations from.")


def kv_to_table(kv: KV) -> Tensor:
    """Per-layer (1, heads, n, head_dim) keys/values -> the (n, layers * 2 * heads * head_dim) table."""
    stacked = torch.stack([torch.stack([k[0], v[0]]) for k, v in kv])  # (L, 2, H, n, hd)
    return stacked.permute(3, 0, 1, 2, 4).reshape(stacked.shape[3], -1)


def table_to_kv(table: Tensor, layout: tuple[int, int, int], dtype: torch.dtype) -> KV:
    """The (n, L * 2 * H * hd) table -> per-layer ((1, H, n, hd) keys, (1, H, n, hd) values)."""
    layers, heads, head_dim = layout
    t = table.to(dtype).view(table.shape[0], layers, 2, heads, head_dim).permute(1, 2, 3, 0, 4)  # (L, 2, H, n, hd)
    return [(t[i, 0][None], t[i, 1][None]) for i in range(layers)]


@register
class PrefixTuning(CollapsedTable, SoftPromptMethod):
    name = "prefix-tuning"
    config_class = PrefixTuningConfig
    default_lr = 5e-4  # SST-2: 3e-3 unsettles the MLP's start (val 0.645 -> 0.56 in 28 steps), 5e-4 does not
    peft_type = "PREFIX_TUNING"

    def __init__(self, config: PrefixTuningConfig, backbone: Backbone, slots: list[SoftSlot], init_context: dict):
        super().__init__(config, backbone, slots, init_context)
        self.layout = backbone.kv_layout
        self._width, self._dtype = backbone.hidden_size, backbone.embedding_matrix.dtype
        n = config.num_virtual_tokens
        if config.init == "random" and backbone.kind == "decoder":
            warnings.warn(
                f"{self.name}: init random on a decoder replaces its attention sink with noise and wrecks its "
                "hidden states (on SQuAD it never trained past a linear probe); init labels or vocab starts "
                "from real activations and keeps them.",
                stacklevel=2,
            )
        ids = init_token_ids(config, backbone, n, init_context)
        start, token_emb = self._real_activations(backbone, ids, n, init_context)
        self.mlp = None
        if config.prefix_hidden:
            self.register_buffer("start", start)  # (n, L*2*H*hd), fixed
            self.embedding = nn.Parameter(token_emb)  # (n, d)
            self.mlp = nn.Sequential(
                nn.Linear(token_emb.shape[1], config.prefix_hidden),
                nn.Tanh(),
                nn.Linear(config.prefix_hidden, start.shape[1]),
            )
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)
        else:
            self.prefix = nn.Parameter(start)  # (n, L*2*H*hd)

    @staticmethod
    def _real_activations(backbone: Backbone, ids: Tensor | None, n: int, ctx: dict) -> tuple[Tensor, Tensor]:
        """(table, token embeddings) of real tokens; for init random, noise of the same scale."""
        gen = ctx.get("generator")
        sample = ids if ids is not None else torch.randint(0, min(5000, backbone.embedding_matrix.shape[0]), (n,))
        with torch.no_grad():
            emb = backbone.embed(sample)
            table = kv_to_table(backbone.prefix_kv(emb[None])).float()
            emb = emb.float()
        if ids is None:
            table = torch.randn(n, table.shape[1], generator=gen) * float(table.std())
            emb = torch.randn(n, emb.shape[1], generator=gen) * float(emb.std())
        return table.clone(), emb.clone()

    # --- the table ----------------------------------------------------------------------------
    def encode_table(self) -> Tensor:
        if self.mlp is None:
            return self.prefix
        return self.start + self.mlp(self.embedding)  # (n, L*2*H*hd)

    def load_table(self, table: Tensor) -> None:
        """Set the (n, L*2*H*hd) table directly (e.g. imported from PEFT); only without the MLP."""
        if self.mlp is not None:
            raise PromptTuneError(f"{self.name}: the table comes from the MLP; set prefix_hidden 0 to load a table.")
        with torch.no_grad():
            self.prefix.copy_(table)

    def kv(self) -> KV:
        return table_to_kv(self.table(), self.layout, self._dtype)

    # --- hooks --------------------------------------------------------------------------------
    def slot_embeddings(self, slot: SoftSlot) -> Tensor:
        return torch.zeros(0, self._width, dtype=self._dtype)  # the KV prefix takes the slots' place

    def prefix_kv(self, backbone: Backbone, segments: list[Tensor | SoftSlot]) -> KV:
        """The KV prefix first, then the template's constant text continuing from it."""
        kv = self.kv()
        embeds = self.prefix_embeddings(backbone, segments)  # hard text only: the soft slots are empty
        return kv if embeds is None else backbone.prefix_kv(embeds, past=kv)

    def lead_of(self, backbone: Backbone, segments: list[Tensor | SoftSlot]) -> None:
        return None  # the trained keys/values come first: no hard text begins the prefix
