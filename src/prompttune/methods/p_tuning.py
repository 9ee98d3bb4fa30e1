"""P-tuning (Liu et al. 2021, "GPT Understands, Too"): virtual tokens produced by a prompt encoder.

The template's soft slots may stand anywhere, in several groups between hard text (``[soft:3]`` ...
``{{ text }}`` ... ``[soft:2]``): slots in the constant prefix are cached with it, slots after the first
row field become input embeddings of every row. All the slots' tokens together form one sequence that a
prompt encoder (PEFT's ``PromptEncoder`` shape) turns into the input embeddings:

- ``encoder mlp``: Linear -> ReLU -> Linear -> ReLU -> Linear;
- ``encoder lstm``: a 2-layer bidirectional LSTM over the tokens, then Linear -> ReLU -> Linear (the paper's).

With ``residual`` (the default) the encoder's output is added to its input and its last layer starts at
zero, so training starts from the init embeddings (the label words, then frequent words, as prompt tuning);
``residual false`` is the paper's and PEFT's form (the encoder's output alone). After training the encoder is
collapsed into the table of virtual-token embeddings that inference reads; the input embeddings and the
encoder are saved too, for ``--resume``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prompttune.core.errors import PromptTuneError
from prompttune.core.template import SoftSlot
from prompttune.methods.base import register
from prompttune.methods.lookup_table import CollapsedTable
from prompttune.methods.prompt_tuning import PromptTuning, PromptTuningConfig

ENCODERS = ("mlp", "lstm")


@dataclass
class PTuningConfig(PromptTuningConfig):
    encoder: str = "mlp"
    encoder_hidden: int = 128
    residual: bool = True
    # The encoder trains at this factor x --lr (the embeddings at --lr). SST-2 held-out at lr 0.01:
    # 0.887 at 0.3, 0.870 at 0.1, 0.851 at 1.0 (the encoder amplifies each step).
    encoder_lr_scale: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder not in ENCODERS:
            raise PromptTuneError(f"encoder {self.encoder}: unknown; choose one of {', '.join(ENCODERS)}.")
        if self.encoder_hidden < 1:
            raise PromptTuneError(f"encoder_hidden {self.encoder_hidden}: must be at least 1.")
        if self.encoder_lr_scale <= 0:
            raise PromptTuneError(f"encoder_lr_scale {self.encoder_lr_scale}: must be positive.")
        if self.reparam_hidden:
            raise PromptTuneError("p-tuning: reparam_hidden is prompt tuning's; set encoder_hidden instead.")


class PromptEncoder(nn.Module):
    """(1, n, d) -> (1, n, d), after PEFT's PromptEncoder."""

    def __init__(self, kind: str, d: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(d, hidden, num_layers=2, bidirectional=True, batch_first=True) if kind == "lstm" else None
        if self.lstm is None:
            self.head = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        else:
            self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, d)

    def forward(self, x: Tensor) -> Tensor:
        if self.lstm is not None:
            x = self.lstm(x)[0]
        return self.out(self.head(x))


@register
class PTuning(CollapsedTable, PromptTuning):
    name = "p-tuning"
    config_class = PTuningConfig
    peft_type = "P_TUNING"
    default_lr = 0.01  # with encoder_lr_scale 0.3 (SST-2 held-out 0.887; 0.865 at 3e-3 with the encoder at 1x)

    def __init__(self, config: PTuningConfig, backbone, slots: list[SoftSlot], init_context: dict):
        super().__init__(config, backbone, slots, init_context)
        d = self.embeddings.shape[1]
        if not config.residual:  # the paper's form: the encoder alone, from random inputs
            gen = init_context.get("generator")
            with torch.no_grad():
                self.embeddings.copy_(torch.randn(self.embeddings.shape, generator=gen))
        self.encoder = PromptEncoder(config.encoder, d, config.encoder_hidden)
        if config.residual:
            nn.init.zeros_(self.encoder.out.weight)
            nn.init.zeros_(self.encoder.out.bias)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        encoder = [p for p in self.encoder.parameters() if p.requires_grad]
        ids = {id(p) for p in encoder}
        return {"prompt": [p for p in self.parameters() if p.requires_grad and id(p) not in ids], "encoder": encoder}

    @property
    def lr_scales(self) -> dict[str, float]:
        return {"encoder": self.config.encoder_lr_scale}

    def encode_table(self) -> Tensor:
        out = self.encoder(self.embeddings[None])[0]  # (n_virtual, d)
        return self.embeddings + out if self.config.residual else out
