"""The backbone's attention functions, registered with transformers' ``AttentionInterface``.

``grouped_attention`` is transformers' eager attention without its ``repeat_kv``: under grouped-query attention
(the default decoder has 9 query heads reading 3 key/value heads) eager attention copies every key and value
``heads / kv_heads`` times, at every layer of every step, before two batched products over the copies. Here the
query heads that share a key/value head are laid side by side instead, ``(b, heads, q, hd) -> (b, kv_heads,
groups * q, hd)`` (a view), and meet the keys/values as they are; for a few query rows (decoding) the scores
are taken as keys x queries, so the cache's keys are read where they lie instead of being copied transposed.
Same products over the same numbers (outputs equal eager attention's to float rounding: 6e-7 in float32, 5e-4 in
bfloat16); nothing is copied. Measured on this 2-core CPU, one layer of the default decoder's shape
(``.venv/bin/python benchmarks/bench_attention.py``): a decoding step of 16 rows over 150 cached positions
4.24 -> 0.60 ms in bfloat16 (7.1x), 2.34 -> 0.34 ms in float32; training (16 rows of 100 tokens, forward and
backward) 27.7 -> 26.0 ms in bfloat16, 31.8 -> 25.1 ms in float32. On the whole decoder in bfloat16 a decoding
step of 16 rows went 155 -> 105 ms.

Without gradients (scoring, evaluation, a late template's text pass, a prompt's prefill: more than
``FEW_QUERIES`` query rows a key/value head) ``attend`` hands the work to PyTorch's fused
``scaled_dot_product_attention`` (grouped-query aware), which never holds a head's (q, t) scores: one layer over
8 rows of 1,024 tokens 464 -> 50 ms in bfloat16, and 500 IMDB reviews evaluated in 84 s instead of 224 with 1.6 GB
instead of 2.5. Its backward pass is slower than the eager one on short rows (5x at 16 rows of 40 tokens), so a
step with gradients keeps the eager path and its weights, up to rows of ``FUSED_WITH_GRAD`` tokens.

``prefix_attention`` is the encoders' way to a key/value prefix (encoders take no cache): the same attention
over the layer's prefix and the row's own keys/values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from prompttune.core import one_pass

GROUPED = "prompttune_grouped"
# A forward's keyword for rows run over prefixes held once (``shared_prefix/``): a callable plan that takes a
# layer's attention, ``plan(module, query, key, value, attention_mask, scaling) -> (output, None)``.
PLAN = "prompttune_plan"
PREFIX_ATTENTION = "prompttune_prefix"
# Up to this many query rows per key/value head, scores are computed as keys x queries: a product with the
# transposed keys would first copy them (a decoding step's cache, every layer) to make them contiguous.
FEW_QUERIES = 16
# From this many query tokens a step with gradients takes the fused kernel too: its backward pass is the faster
# there (one layer, bfloat16, 1 thread, forward and backward: 1 row of 1,024 tokens 133 -> 64 ms, 2 of 512 63 -> 48;
# 4 of 256 24 -> 26 and 8 of 128 10 -> 34, so shorter rows keep the eager path) and holds no (q, t) scores. From
# 256 rather than 512 since label words run after their rows (up to 256 label tokens a row, sampled_labels): DBpedia-14
# with four forms per label, `prompttune train ... --max-steps 8`: 2.47 -> 2.61 examples/s, peak RSS 3.20 -> 2.48 GB
FUSED_WITH_GRAD = 256
# From this many keys a step with gradients takes the fused kernel whatever its query tokens: the eager path keeps
# (q, t) weights per head in float32 and bfloat16 for the backward pass, which for rows after a long constant prefix
# (a custom template's 1,800-token system text: 17 rows of 30 tokens) is ~50 MB a layer, 1.5 GB over 30 layers.
# The fused backward is ~10% slower there (one layer, bfloat16, 1 thread: 17 rows of 20 tokens over 1,000 keys
# 48 -> 53 ms; over 500, 21 -> 24), so shorter spans keep the eager path.
FUSED_KEYS_WITH_GRAD = 1024


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def attend(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scaling, dropout: float, training: bool):
    """Softmax attention, grouped-query aware. query (b, h, q, hd); key/value (b, kv, t, hd) with h a multiple
    of kv; mask additive, (b, 1 or h, q, >= t). Returns (output (b, q, h, hd), weights (b, h, q, t)), the weights
    None where PyTorch's fused attention (``scaled_dot_product_attention``, which never holds the (q, t) scores of
    a whole head) computes the output: no gradient taken, rows of ``FUSED_WITH_GRAD`` tokens or more, or
    ``FUSED_KEYS_WITH_GRAD`` keys or more."""
    b, h, q, hd = query.shape
    kv, t = key.shape[1], key.shape[2]
    if h % kv:
        raise ValueError(f"attention: {h} query heads cannot share {kv} key/value heads evenly")
    g = h // kv
    scale = scaling if scaling is not None else hd**-0.5
    long = q >= FUSED_WITH_GRAD or t >= FUSED_KEYS_WITH_GRAD
    if g * q > FEW_QUERIES and (long or not _needs_grad(query, key, value)):
        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=None if mask is None else mask[..., :t],
            dropout_p=dropout if training else 0.0,
            scale=scale,
            enable_gqa=g > 1,
        )
        return out.transpose(1, 2).contiguous(), None
    grouped_query = query.reshape(b, kv, g * q, hd)
    if g * q <= FEW_QUERIES:  # decoding: keys times queries, the keys read where they lie (no transposed copy)
        weights = torch.matmul(key, grouped_query.transpose(2, 3)).transpose(2, 3).contiguous() * scale
    else:
        weights = torch.matmul(grouped_query, key.transpose(2, 3)) * scale  # (b, kv, g*q, t)
    if mask is not None:
        mask = mask[..., :t]
        grouped = mask[:, :, None] if mask.shape[1] == 1 else mask.reshape(mask.shape[0], kv, g, q, t)
        weights = (weights.view(b, kv, g, q, t) + grouped).view(b, kv, g * q, t)
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout and training:
        weights = torch.nn.functional.dropout(weights, p=dropout, training=True)
    out = torch.matmul(weights, value).view(b, h, q, value.shape[-1])
    return out.transpose(1, 2).contiguous(), weights.view(b, h, q, t)


def grouped_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention for decoders, keys/values never repeated per query head (``AttentionInterface`` form).
    With ``prompttune_one_pass`` (a ``core.one_pass.Layout``): a prefix and its rows in one batch; with
    ``prompttune_plan`` (``PLAN``): rows over prefixes held once, the plan's attention."""
    plan = kwargs.get(PLAN)
    if plan is not None:
        return plan(module, query, key, value, attention_mask, scaling)
    layout = kwargs.get(one_pass.KWARG)
    if layout is not None:
        kw = {"scaling": scaling, "dropout": dropout, "training": module.training}
        return one_pass.attention(attend, query, key, value, attention_mask, layout, **kw)
    return attend(query, key, value, attention_mask, scaling, dropout, module.training)


def prefix_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, prompttune_prefix=None, **kwargs
):
    """Attention whose keys/values start with the layer's KV prefix (any encoder on the attention interface).

    query (b, h, q, hd); key/value (b, kv_heads, t, hd); prefix (b, kv_heads, p, hd) per layer. The additive
    mask (b, 1, q, t) gets p open columns in front. With ``prompttune_capture`` (a list) each layer's full
    keys/values are appended to it, which is how an encoder returns a prefix it computed.
    """
    if prompttune_prefix:
        pk, pv = prompttune_prefix[module.layer_idx]
        b = query.shape[0]
        key = torch.cat([pk.to(key.dtype).expand(b, -1, -1, -1), key], dim=2)  # (b, kv_heads, p + t, hd)
        value = torch.cat([pv.to(value.dtype).expand(b, -1, -1, -1), value], dim=2)
        if attention_mask is not None:
            attention_mask = torch.nn.functional.pad(attention_mask, (pk.shape[2], 0), value=0.0)
    capture = kwargs.get("prompttune_capture")
    if capture is not None:
        capture.append((key, value))
    return attend(query, key, value, attention_mask, scaling, dropout, module.training)


_registered = False


def register() -> None:
    """Make both functions known to transformers (once); their masks are eager attention's."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    for name, fn in ((GROUPED, grouped_attention), (PREFIX_ATTENTION, prefix_attention)):
        AttentionInterface.register(name, fn)
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, eager_mask)
    _registered = True
