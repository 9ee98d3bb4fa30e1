"""Rows of one task over its cached prefix, held once: what the label-word scorer takes at inference and in
validation (``PromptModel.label_scores``), where transformers' own path would copy the prefix into every row's
keys/values. How it works: ``docs/architecture.md`` ("A prefix held once"); measured in the README."""

from __future__ import annotations

import torch
from torch import Tensor

from prompttune.shared_prefix.cascade import applies, run_rows


def holds_once(backbone, prefix, rows: list[list[int]]) -> bool:
    """Whether ``rows`` (token ids after the prefix) run packed over one copy of ``prefix``: a decoder ``run_rows``
    takes, one prefix for all the rows (not a prefix per row, as an input-dependent mixture makes), no gradient
    (training steps keep their own paths), and every row with tokens of its own (a row's read-out is its last)."""
    one = bool(prefix) and prefix[0][0].shape[0] == 1
    return one and not torch.is_grad_enabled() and all(rows) and applies(backbone)


def run_over(backbone, input_ids, mask: Tensor, positions: Tensor, prefix, inputs_embeds=None, trees=None):
    """Hidden states (b, width, d) of left-padded rows continuing ``prefix``: ``mask`` over the rows (its last
    ``width`` columns: a mask over prefix + rows will do), ``positions`` numbered from the prefix's end; ``trees``
    (b, n, n): each row's last n tokens are its label words' under that tree (``label_forms.inline_layout``)."""
    groups = [(torch.arange(mask.shape[0]), prefix)]
    return run_rows(backbone, input_ids, mask, positions, groups, inputs_embeds, trees=trees)
