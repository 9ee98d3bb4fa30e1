"""Softmax attention that also returns each query's log-sum-exp, in PyTorch's fused CPU flash-attention kernel
(products, max, exp and sum on GPUs): what lets parts of one softmax (a task's cached prefix, its rows) be computed
apart and merged exactly (``shared_prefix/cascade.py``), and the one attention call per task of a packed batch
(``shared_prefix/packed.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# PyTorch's CPU flash-attention kernel is 1.5-3x slower when the keys are not a multiple of 16 (32 rows' 33 query
# heads over their own 11 keys: 400 us, over 16 of which 5 masked: 145 us; 150 queries over 303 prefix keys: 124 us,
# over 304: 87 us; bfloat16, 2 threads), so the keys are padded with masked zeros to a multiple of this.
KEY_ALIGN = 16
KEY_ALIGN_PAYS = 32  # unmasked keys (a prefix) up to this many: padding them costs what it saves


def pad_mask(mask: Tensor, extra: int) -> Tensor:
    """An additive mask with ``extra`` blocked key columns after its own."""
    return F.pad(mask, (0, extra), value=torch.finfo(mask.dtype).min) if extra else mask


def attend(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float) -> tuple[Tensor, Tensor]:
    """Softmax attention (b, kv, q, hd) over (b, kv, t, hd) and each query's log-sum-exp of its scores (b, kv, q),
    in one fused pass (PyTorch's CPU flash-attention kernel: the scores are never held whole). The log-sum-exp is
    what lets two parts of one softmax merge exactly. Measured for 32 rows of 30 tokens over a 939-token prefix
    (one layer of the default decoder, float32, 2 cores): 96 ms as products, max, exp and sum vs 19 ms fused."""
    if query.device.type == "cpu":
        t = key.shape[2]
        extra = -t % KEY_ALIGN if mask is not None or t > KEY_ALIGN_PAYS else 0
        if extra:  # masked zero keys up to a multiple of KEY_ALIGN: the kernel's fast path
            key, value = F.pad(key, (0, 0, 0, extra)), F.pad(value, (0, 0, 0, extra))
            if mask is None:
                mask = pad_mask(query.new_zeros(1, 1, 1, t), extra)
        if mask is not None and mask.shape[-1] < key.shape[2]:
            mask = pad_mask(mask, key.shape[2] - mask.shape[-1])
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query.contiguous(), key, value, 0.0, False, attn_mask=mask, scale=scale
        )
        return out, lse
    return attend_eager(query, key, value, mask, scale)


def attend_eager(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float) -> tuple[Tensor, ...]:
    """``attend`` as products, max, exp and sum (GPUs). A mask may carry blocked columns past the keys (the rows'
    mask is laid out once per pass, padded for the CPU kernel): only the keys' own columns are read."""
    w = torch.matmul(query, key.transpose(2, 3)).float() * scale
    if mask is not None:
        w = w + mask[..., : key.shape[2]]
    lse = torch.logsumexp(w, dim=-1)
    return torch.matmul(torch.exp(w - lse[..., None]).to(value.dtype), value), lse
