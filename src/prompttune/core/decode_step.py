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

The products take the step's few rows as columns, ``W @ x.T``, and leave the result transposed (no copy): the next
product reads it as the columns it already is. For a step's 16 rows in bfloat16 the 120 products of the default
decoder's 30 layers take 10 ms that way against 15.6 ms as ``F.linear`` (15.6 -> 12.8 ms with a copy back to rows
after each). In bfloat16 a layer's query/key/value projections and its gate/up projections each run as one product
over their weights stacked once (``joined``: each layer's weight becomes a view of its rows, so memory stays as it
was), and queries and keys are rotated together. Step of 16 rows over 90 cached positions, bfloat16: 37.3 -> 32 ms
(1 row: 30.5 -> 28; 64 rows: 63 -> 60); float32 is unchanged (62 ms; stacking made its products slower there, so
float32 keeps them apart).

Used by ``Backbone.run`` for decoders whose layers have exactly Llama's structure (``model_type`` llama, the
project's grouped attention), without gradients, on a cache the caller keeps (``grows_in_place``), for at most
``MAX_STEP_TOKENS`` new tokens per row; everything else (longer prompts, training, other architectures) runs
transformers' forward.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from prompttune.core import attention as attention_fns
from prompttune.core import heap, skinny

MAX_STEP_TOKENS = 16  # new tokens per row up to which a pass counts as a decoding step
_LAYER_PARTS = ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp")
_ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")
_QKV = ("q_proj", "k_proj", "v_proj")
_GATE_UP = ("gate_proj", "up_proj")


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


def step(body, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache, plan=None) -> Tensor:
    """The last hidden states (b, s, d) of ``input_ids`` (b, s) continuing ``cache`` (a ``GrowingCache``, written
    in place); ``attention_mask`` covers the cache and the new tokens. ``plan`` (``shared_prefix.cascade.Plan``):
    the cache holds the rows' own keys/values only, and each layer merges in the prefix the plan holds once."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, rotate_half

    b, s = input_ids.shape
    hidden = body.embed_tokens(input_ids)
    cos, sin = body.rotary_emb(hidden, position_ids)
    mask = plain = additive_mask(attention_mask, cache.get_seq_length(), hidden.dtype)
    groups = body.config.num_attention_heads // body.config.num_key_value_heads  # query heads per key/value head
    mask = mask[:, :, None].expand(b, 1, groups, s, mask.shape[-1]).reshape(b, 1, groups * s, mask.shape[-1])
    for i, layer in enumerate(body.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        shape = (b, s, -1, attn.head_dim)
        qkv = joined(attn, _QKV)
        if qkv is None:
            q = linear(attn.q_proj, x).view(shape).transpose(1, 2)
            k = linear(attn.k_proj, x).view(shape).transpose(1, 2)
            v = linear(attn.v_proj, x).view(shape).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
        else:  # one product; q and k rotated together (the same elementwise steps as apply_rotary_pos_emb)
            heads = [n // attn.head_dim for n in qkv.sizes]
            y = _product(x, qkv.weight).view(shape).transpose(1, 2)  # (b, q + k + v heads, s, head_dim)
            qk = y[:, : heads[0] + heads[1]]
            qk = qk * cos.unsqueeze(1) + rotate_half(qk) * sin.unsqueeze(1)
            q, k, v = qk[:, : heads[0]], qk[:, heads[0] :], y[:, heads[0] + heads[1] :]
        k, v = cache.layers[i].update(k, v)
        if plan is None:
            out = _attention(q, k, v, mask, attn.scaling)
        else:  # the rows' own keys/values here, the prefix's merged in (held once by the plan)
            out = plan(attn, q, k, v, plain, attn.scaling)[0].reshape(b, s, -1)
        hidden = hidden + linear(attn.o_proj, out)
        x = layer.post_attention_layernorm(hidden)
        mlp = layer.mlp
        gate_up = joined(mlp, _GATE_UP) if _is_silu(getattr(mlp, "act_fn", None)) else None
        if gate_up is None:
            hidden = hidden + mlp(_dense(x))
        else:
            y = _product(x, gate_up.weight)
            n = gate_up.sizes[0]
            hidden = hidden + linear(mlp.down_proj, F.silu(y[..., :n]) * y[..., n:])
    if _restacked[0]:  # the separate weights were freed (~140 MB in bfloat16): glibc would keep that memory
        _restacked[0] = False
        heap.release_memory()
    return _dense(body.norm(hidden))


_PLAIN = (torch.nn.Linear, skinny.SkinnyLinear)


def linear(module, x: Tensor) -> Tensor:
    """``module(x)``; a plain linear layer (a decoder's LM head too) as ``_product``. Any other (LoRA's) gets a
    row-major copy of ``x``: transformers' layers expect one."""
    return _product(x, module.weight, module.bias) if type(module) in _PLAIN else module(_dense(x))


def _dense(x: Tensor) -> Tensor:
    """``x`` with row-major strides (a copy where ``_product``'s transposed outputs left it otherwise): what
    transformers' layers and ``torch.matmul``'s fast path expect. ``contiguous()`` is not enough: it keeps any
    stride on a dimension of size 1, and ``matmul`` then takes a batched product with the weight copied per row."""
    strides, n = [], 1
    for size in reversed(x.shape):
        strides.insert(0, n)
        n *= size
    return x if x.stride() == tuple(strides) else x.clone(memory_format=torch.contiguous_format)


def _is_silu(act) -> bool:
    return type(act) in _silu_types()


@functools.cache
def _silu_types() -> tuple[type, ...]:
    """The activation classes that are SiLU (looked up once, not in every layer of every step)."""
    from transformers.activations import SiLUActivation

    return (torch.nn.SiLU, SiLUActivation)


def _product(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` for a step's few rows on a CPU taken as ``weight @ x.T``, returned as the
    transpose of that product without a copy: the next product reads it as the columns it already is."""
    flat = x.reshape(-1, weight.shape[1])
    if x.device.type != "cpu" or flat.shape[0] > skinny.SKINNY_ROWS:
        return F.linear(flat, weight, bias).view(*x.shape[:-1], weight.shape[0])
    y = torch.mm(weight, flat.T) if bias is None else torch.addmm(bias[:, None], weight, flat.T)
    return y.T.view(*x.shape[:-1], weight.shape[0])


class Joined(NamedTuple):
    """Linear layers of one input taken as one product: their weights stacked in ``weight``."""

    weight: Tensor  # (sum of sizes, in_features)
    parts: tuple[Tensor, ...]  # each layer's weight: a view of its rows of ``weight``
    sizes: tuple[int, ...]  # each layer's output features
    pointers: tuple[int, ...]  # where each view's data starts (a part whose data moved is stacked again)


def joined(module, names: tuple[str, ...]) -> Joined | None:
    """``module``'s linear layers ``names`` as one product, or None where any is not a plain bias-free frozen
    ``nn.Linear`` (a LoRA layer, a weight being trained: each then runs as itself) or they differ in dtype or device.

    The first call stacks the weights and makes each layer's own weight a view of its rows of the stack, so the
    model holds them once (nothing is copied twice; a state dict and training see the same values). A layer whose
    weight was replaced since (a new ``Parameter``, or new ``.data`` as ``model.to(...)`` gives) is stacked again."""
    parts = [getattr(module, n, None) for n in names]
    key = "_prompttune_joined_" + "_".join(names)
    done = module.__dict__.get(key)
    if done is not None and all(
        p is not None and p.weight is w and w.data_ptr() == ptr
        for p, w, ptr in zip(parts, done.parts, done.pointers, strict=True)
    ):  # the same parameters, still on the stack's memory (``model.to(...)`` swaps a parameter's ``.data``)
        return done
    if not all(type(p) in _PLAIN and p.bias is None for p in parts):
        return None
    weights = [p.weight for p in parts]
    if any(w.requires_grad for w in weights) or len({(w.dtype, w.device, w.shape[1]) for w in weights}) != 1:
        return None
    if weights[0].dtype == torch.float32:  # measured: one stacked float32 product is slower than its parts here
        return None
    stack = torch.cat([w.detach() for w in weights])
    views, start = [], 0
    for p, w in zip(parts, weights, strict=True):
        p.weight = torch.nn.Parameter(stack[start : start + w.shape[0]], requires_grad=False)
        views.append(p.weight)
        start += w.shape[0]
    done = Joined(stack, tuple(views), tuple(w.shape[0] for w in weights), tuple(v.data_ptr() for v in views))
    module.__dict__[key] = done
    _restacked[0] = True
    return done


_restacked = [False]  # weights were stacked during this step: the heap is trimmed after it


def _attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scaling: float) -> Tensor:
    """(b, s, heads x head_dim) attention output. The query heads that share a key/value head go side by side as
    one block of ``groups x s`` queries (as ``attention.attend`` lays them), so PyTorch's fused kernel reads each
    key/value head once, where it lies in the cache (no copy); ``mask`` is already laid out per block row."""
    b, h, s, d = q.shape
    kv = k.shape[1]
    q = _dense(q.reshape(b, kv, (h // kv) * s, d))  # the fused kernel takes row-major queries only
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)
    return out.view(b, h, s, d).transpose(1, 2).reshape(b, s, h * d)
