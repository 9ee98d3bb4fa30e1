"""Methods whose table comes out of a trained encoder (an MLP, an LSTM): inference reads the collapsed table.

Training runs the encoder on every call (gradients flow into it). Without gradients (validation, inference)
the encoder runs once and its output, the *collapsed* lookup table, is reused until a parameter or buffer
changes: tensor version counters move on every optimizer step and every ``load_state_dict``.

``trainable_state`` saves the collapsed table under ``"table"`` next to the encoder's parameters (what resuming
needs; the Trainer's checkpoint adds the optimizer state). Loading takes the encoder's parameters and
recomputes the table from them once, so a table saved beside other parameters (e.g. the Trainer's moving
average, which averages parameters, not tables) can never disagree with them.
"""

from __future__ import annotations

import torch
from torch import Tensor

TABLE_KEY = "table"


class CollapsedTable:
    """Mixin for a SoftPromptMethod that defines ``encode_table() -> Tensor``."""

    def encode_table(self) -> Tensor:
        raise NotImplementedError

    def _versions(self) -> tuple:
        return tuple((id(t), t._version) for t in (*self.parameters(), *self.buffers()))

    def table(self) -> Tensor:
        if torch.is_grad_enabled():
            return self.encode_table()
        key = self._versions()
        if self.__dict__.get("_collapsed_key") != key:
            self.__dict__["_collapsed"] = self.encode_table().detach()
            self.__dict__["_collapsed_key"] = key
        return self.__dict__["_collapsed"]

    def trainable_state(self) -> dict[str, Tensor]:
        with torch.no_grad():
            table = self.table().clone()
        return {**super().trainable_state(), TABLE_KEY: table}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        super().load_trainable_state({k: v for k, v in state.items() if k != TABLE_KEY})
