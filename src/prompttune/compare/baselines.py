"""Weight-training baselines for `prompttune compare`: LoRA (through PEFT) and full fine-tuning.

They are scored exactly like the prompts (same template, same verbalizer read-out over the label
tokens), so their accuracy is comparable. The difference that matters: the backbone's weights change
at every step, so the template's constant prefix (system text, chat header) cannot be cached across
steps. ``BackboneWeights`` therefore recomputes the whole prefix with gradients on every call (no
cached lead text, unlike the soft-prompt methods); the Trainer already drops the scorer's cached
prefix after each step and around each validation.

These live here, not in the method registry: they are baselines to measure prompts against, and a
PromptTask artifact cannot hold them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from prompttune.core.backbone import KV, Backbone
from prompttune.core.errors import PromptTuneError
from prompttune.core.template import SoftSlot
from prompttune.methods.base import MethodConfig, SoftPromptMethod


class BackboneWeights(SoftPromptMethod):
    """The backbone's own trainable weights (LoRA adapters, or all of them) as the 'method': no soft tokens."""

    name = "backbone-weights"  # not registered: only the compare harness builds it

    def __init__(self, config: MethodConfig, backbone: Backbone, slots: list[SoftSlot], init_context: dict):
        super().__init__(config, backbone, slots, init_context)
        self.net = backbone.model  # a submodule, so parameters() lists what trains
        self._width = backbone.hidden_size

    def slot_embeddings(self, slot: SoftSlot) -> Tensor:
        return torch.zeros(0, self._width, dtype=self.net.get_input_embeddings().weight.dtype)

    def prefix_kv(self, backbone: Backbone, segments: list[Tensor | SoftSlot]) -> KV:
        # The whole prefix, with gradients, every call: its keys/values depend on the weights being trained.
        embeds = self.prefix_embeddings(backbone, segments)
        return backbone.prefix_kv(embeds) if embeds is not None else []

    def lead_of(self, backbone: Backbone, segments: list[Tensor | SoftSlot]) -> None:
        return None  # the weights being trained change the text's keys/values too: nothing to share

    def trainable_state(self) -> dict[str, Tensor]:
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)


@dataclass(frozen=True)
class Baseline:
    prepare: Callable[[Backbone, dict], None]  # make the right weights trainable, given the arm's settings
    defaults: dict  # harness settings (lr ...) and method settings
    dtype: str | None = None  # backbone precision it needs (None: the run's)


def _lora(backbone: Backbone, config: dict) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    settings = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, **config}
    try:
        lora = LoraConfig(**settings)
    except TypeError as e:
        raise PromptTuneError(f"--method-option lora.…: {e} (see peft's LoraConfig for the settings).") from None
    inject_adapter_in_model(lora, backbone.model)  # in place; only the adapters require grad
    for p in backbone.model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # adapters train in float32 over a bfloat16 backbone


def _full(backbone: Backbone, config: dict) -> None:
    if config:
        raise PromptTuneError(f"--method-option full-ft.{sorted(config)[0]}: full fine-tuning has no such setting.")
    backbone.model.requires_grad_(True)


BASELINES: dict[str, Baseline] = {
    "lora": Baseline(_lora, {"lr": 5e-4, "ema": 0.0}),
    # float32 weights: AdamW's small updates vanish when rounded to bfloat16
    "full-ft": Baseline(_full, {"lr": 3e-5, "ema": 0.0}, dtype="float32"),
}


def create_model(name: str, backbone: Backbone, config: dict, build_prompt_model: Callable):
    """Prepare the backbone for baseline ``name`` and build the scorer around it."""
    BASELINES[name].prepare(backbone, config)

    def factory(slots, ctx):
        return BackboneWeights(MethodConfig(), backbone, slots, ctx)

    return build_prompt_model(factory)
