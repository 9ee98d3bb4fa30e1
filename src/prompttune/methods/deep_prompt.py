"""P-tuning v2 / deep prompt tuning (Liu et al. 2022): trainable prompts at every layer.

The same per-layer key/value prefix as prefix tuning (see prefix_tuning.py for the layout and how the
template's soft slots are treated), trained directly rather than through an MLP, which the paper found
unneeded for most tasks (``prefix_hidden`` > 0 turns the reparameterization back on). On an encoder with a
classification or tagging head this is the paper's full method.
"""

from __future__ import annotations

from dataclasses import dataclass

from prompttune.methods.base import register
from prompttune.methods.prefix_tuning import PrefixTuning, PrefixTuningConfig


@dataclass
class DeepPromptConfig(PrefixTuningConfig):
    prefix_hidden: int = 0


@register
class DeepPromptTuning(PrefixTuning):
    name = "p-tuning-v2"
    config_class = DeepPromptConfig
    default_lr = 0.003
