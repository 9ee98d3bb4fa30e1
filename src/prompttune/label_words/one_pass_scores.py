"""A training step's label scores with the prefix's soft tokens in the rows' own pass (``core.one_pass``).

``PromptModel.label_scores(batch, prefix_kv())`` runs the backbone twice: the prefix (with gradients), then the
rows over its keys/values. Where the prefix's trainable part is embeddings after a constant lead (prompt tuning,
P-tuning; ``SoftPromptMethod.prefix_inputs``) and each label form is one token, ``one_pass_label_scores`` gives
the same scores (and gradients) from one pass: one stream of the weights fewer forward and backward.

One pass pads: the prefix's sequence to the rows' width, and every row to the prefix's length where the prefix is
the longer. Where that padding costs more than the pass it saves, two passes stay (``MAX_EXTRA_TOKENS``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from prompttune.core import one_pass
from prompttune.core.token_budget import token_budget_parts
from prompttune.scorer import ROW_TOKEN_BUDGET, PromptModel

# Padded tokens one pass may add over two passes' (the prefix's p, the rows' b x w) and still be the cheaper: a
# second pass costs about what ~100 tokens do (default decoder, bfloat16, 1 thread: SST-2 rows, 16 soft tokens,
# one pass 655 ms a step of 16 rows against 715; 64 soft tokens over rows of ~24 tokens, 1,735 against 852 ms)
MAX_EXTRA_TOKENS = 96


def extra_tokens(prefix_len: int, width: int, rows: int) -> int:
    """What one pass computes beyond two passes: (1 + rows) x max(width, prefix_len) against prefix_len +
    rows x width padded tokens."""
    return (1 + rows) * max(width, prefix_len) - (prefix_len + rows * width)


def one_pass_label_scores(pm: PromptModel, batch: list[list[int]]) -> Tensor | None:
    """(b, n_labels) as ``pm.label_scores(batch, pm.prefix_kv())``, or None where one pass does not apply: no
    gradients, a step in parts (``prefix_once``: its prefix is shared), a decoder without ``core.attention``,
    label words of several tokens, rows taken in parts, a prefix without trainable embeddings, or a prefix so
    much longer than the rows that one pass would cost more than two (``MAX_EXTRA_TOKENS``)."""
    backbone = pm.backbone
    if not (torch.is_grad_enabled() and pm.segments and not pm.in_step and backbone.takes_one_pass):
        return None
    if pm.max_form_len > 1 or len(token_budget_parts(batch, ROW_TOKEN_BUDGET)) > 1:
        return None
    try:
        past, prefix = pm.method.prefix_inputs(backbone, pm.segments)
    except NotImplementedError:  # a method with its own prefix (prefix tuning's keys/values)
        return None
    if prefix is None or not prefix.requires_grad:
        return None
    if extra_tokens(prefix.shape[1], max(len(x) for x in batch), len(batch)) > MAX_EXTRA_TOKENS:
        return None  # a prefix longer than the rows: padding them all to it costs more than the pass saved
    ids, mask, _ = pm._pad_left(batch, 0)
    input_ids, rows = pm.row_inputs(ids)
    rows = backbone.embed(input_ids) if rows is None else rows
    lead = past[0][0].shape[2] if past else 0
    embeds, attention, positions, layout = one_pass.inputs(prefix, rows, mask, lead)
    hidden = backbone.run(None, attention, positions, past, inputs_embeds=embeds, one_pass=layout)
    form_scores, _ = pm.first_tokens(hidden[1:])
    return pm._forms_to_labels(form_scores)
