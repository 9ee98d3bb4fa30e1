"""A decoding step of a Llama decoder without transformers' per-call glue.

A decoding step runs the whole frozen decoder on one token (or a few drafted ones) per row. On the default decoder
in bfloat16 the weight products of a step of 16 rows take ~22 ms on this 2-core CPU (they read the 270 MB of
weights once: memory bound) and transformers' forward took ~50 ms in all: the rest was work done per call (the
4-D mask built again from the 2-D one, keyword plumbing and dispatch through deprecation and output-capturing
wrappers in each of the 30 layers) and the eager attention's batched products, which copy each layer's keys and
values out of the cache's buffer first (~5 ms a step). ``step`` runs the model's own norms, projections, MLP blocks
and rotary embedding in the same order (called as they are: a LoRA or skinny linear layer stays in force), builds
the additive mask once, writes the keys/values straight into the caller's ``GrowingCache`` and attends in
PyTorch's fused CPU kernel with the query heads of each key/value head as one block of queries, reading the cache
where it lies. Outputs equal transformers' forward to float rounding (tested in float32 and bfloat16). Measured on
16 rows over 60-95 cached positions in bfloat16: 50 -> 38-39 ms a step.

Used by ``Backbone.run`` for decoders whose layers have exactly Llama's structure (``model_type`` llama, the
project's grouped attention), without gradients, on a cache the caller keeps (``grows_in_place``), for at most
``MAX_STEP_TOKENS`` new tokens per row; everything else (longer prompts, training, other architectures) runs
transformers' forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from prompttune.core import attention as attention_fns

MAX_STEP_TOKENS = 16  # new tokens per row up to which a pass counts as a decoding step
_LAYER_PARTS = ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp")
_ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")


def supports(model) -> bool:
    """Whether ``model`` (a causal LM) is a Llama decoder on the grouped attention: what ``step`` reproduces."""
    config = model.config
    body = model.get_decoder()
    if config.model_type != "llama" or getattr(config, "_attn_implementation", None) != attention_fns.GROUPED:
        return False
    if not all(hasattr(body, part) for part in ("embed_tokens", "rotary_emb", "layers", "norm")):
        return False
    return all(
        all(hasattr(layer, p) for p in _LAYER_PARTS) and all(hasattr(layer.self_attn, p) for p in _ATTENTION_PARTS)
        for layer in body.layers
    )


def additive_mask(attention_mask: Tensor, before: int, dtype: torch.dtype) -> Tensor:
    """(b, 1, s, width) additive mask: a key is open where ``attention_mask`` is 1 and it is not after the query
    (the s new tokens sit at columns ``before`` ...; causal among themselves), else the dtype's minimum."""
    b, width = attention_mask.shape
    s = width - before
    allowed = attention_mask[:, None, None, :].bool().expand(b, 1, s, width).clone()
    if s > 1:
        allowed[..., before:] &= torch.ones(s, s, dtype=torch.bool, device=allowed.device).tril()
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def step(body, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache) -> Tensor:
    """The last hidden states (b, s, d) of ``input_ids`` (b, s) continuing ``cache`` (a ``GrowingCache``, written
    in place); ``attention_mask`` covers the cache and the new tokens."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    b, s = input_ids.shape
    hidden = body.embed_tokens(input_ids)
    cos, sin = body.rotary_emb(hidden, position_ids)
    mask = additive_mask(attention_mask, cache.get_seq_length(), hidden.dtype)
    groups = body.config.num_attention_heads // body.config.num_key_value_heads  # query heads per key/value head
    mask = mask[:, :, None].expand(b, 1, groups, s, mask.shape[-1]).reshape(b, 1, groups * s, mask.shape[-1])
    for i, layer in enumerate(body.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        shape = (b, s, -1, attn.head_dim)
        q = attn.q_proj(x).view(shape).transpose(1, 2)
        k = attn.k_proj(x).view(shape).transpose(1, 2)
        v = attn.v_proj(x).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k, v = cache.layers[i].update(k, v)
        out = _attention(q, k, v, mask, attn.scaling)
        hidden = hidden + attn.o_proj(out)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return body.norm(hidden)


def _attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scaling: float) -> Tensor:
    """(b, s, heads x head_dim) attention output. The query heads that share a key/value head go side by side as
    one block of ``groups x s`` queries (as ``attention.attend`` lays them), so PyTorch's fused kernel reads each
    key/value head once, where it lies in the cache (no copy); ``mask`` is already laid out per block row."""
    b, h, s, d = q.shape
    kv = k.shape[1]
    out = F.scaled_dot_product_attention(q.reshape(b, kv, (h // kv) * s, d), k, v, attn_mask=mask, scale=scaling)
    return out.view(b, h, s, d).transpose(1, 2).reshape(b, s, h * d)
