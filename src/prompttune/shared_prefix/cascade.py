"""Attention over per-task prefixes without copying them per row ("cascade" attention, as FlashInfer's shared-
prefix kernels do it): a mixed batch runs its rows only, and each layer's attention adds, for every task in the
batch, its rows' attention to that task's cached prefix keys/values, held once.

For a query row, softmax attention over [prefix | row] splits into two parts with their own maximum m, sum s and
weighted values o; they merge exactly:

    m = max(m_row, m_prefix);  out = (o_row e^(m_row - m) + o_prefix e^(m_prefix - m)) / (s_row e^.. + s_prefix e^..)

so the result equals attention over the concatenation (tested against the padded layout). The padded layout
copied every prefix to every row's slot, padded to the longest prefix in the batch: with a 1,000-token system
prompt or few-shot demos among the tasks, that was hundreds of MB of keys/values built per batch.

A batch's first pass runs its rows packed (``shared_prefix/packed.py``: one attention call per task over its
prefix and its rows, no merge); the split and merge here (``Plan``) serve rows that continue a cache of their own
(the 2nd.. tokens of multi-token label words), which stays in the rows' padded layout.

A forward passes its plan as ``prompttune_plan`` (``core.attention.PLAN``); each layer's attention hands its work to
it. ``core.attention.grouped_attention`` (the Llama-family decoders') does so itself, so such a model is never
switched: training's one-pass steps and decoding's fast steps, which ask for that attention, keep working beside
it. A decoder on eager attention is switched once to ``cascade_attention``, registered with transformers'
AttentionInterface, which without a plan is the model's eager attention: switching changes nothing else.
"""

from __future__ import annotations

import sys
import threading

import torch
from torch import Tensor

from prompttune.core import attention
from prompttune.shared_prefix.flash import KEY_ALIGN, attend, pad_mask
from prompttune.shared_prefix.packed import Packed

CASCADE = "prompttune_cascade"
_lock = threading.Lock()
_registered = False


def cascade_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The attention of a decoder on eager attention switched to the cascade (``use_cascade``): with a plan
    (``prompttune_plan``: ``Packed`` or ``Plan``) the plan's attention, else the model's eager attention. A decoder on
    ``core.attention``'s grouped attention is not switched: that function takes the plan itself."""
    plan = kwargs.pop(attention.PLAN, None)
    if plan is not None:
        return plan(module, query, key, value, attention_mask, scaling)
    eager = sys.modules[type(module).__module__].eager_attention_forward
    return eager(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


class Plan:
    """The prefix part of a cascaded pass, fixed for all its layers: ``flat`` (N,) the real (not left-padding) tokens of
    the rows of the tasks with a prefix, as row * q + position, task after task; ``bounds`` each task's slice of
    them; ``prefixes`` each task's per-layer keys/values ((1, kv_heads, p, hd) each)."""

    __slots__ = ("flat", "bounds", "prefixes", "_mask")

    def __init__(self, groups, valid: Tensor):
        n = valid.shape[1]
        flats, self.bounds, self.prefixes, start = [], [], [], 0
        for rows, prefix in groups:
            r, pos = valid[rows].nonzero(as_tuple=True)  # row-major
            if len(r):
                flats.append(rows[r] * n + pos)
                self.bounds.append((start, start + len(r)))
                self.prefixes.append(prefix)
                start += len(r)
        self.flat = torch.cat(flats) if flats else torch.zeros(0, dtype=torch.long, device=valid.device)
        self._mask = None  # (the layers' attention mask, the rows' part's mask made from it)

    def __call__(self, module, query, key, value, attention_mask, scaling):
        """A layer's attention: query (b, h, q, hd); key/value (b, kv_heads, t, hd), the rows' own; each task's
        prefix merged in for its rows' real tokens."""
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        b, h, n, hd = query.shape
        kv, t = key.shape[1], key.shape[2]
        rep = h // kv
        # the rows' own keys/values, met by the query heads that share them side by side (as attention.attend)
        mask = self.rows_mask(attention_mask, query.dtype, kv, rep, n, t)
        o_row, lse_row = attend(query.reshape(b, kv, rep * n, hd), key, value, mask, scale)
        out = o_row.reshape(b, h, n, hd).transpose(1, 2).contiguous()  # (b, n, h, hd): what the layer reads
        if self.flat.numel():
            lse = lse_row.reshape(b, h, n).transpose(1, 2).reshape(b * n, h)
            _merge_prefixes(query, out.view(b * n, h, hd), lse, self, module.layer_idx, scale)
        return out, None

    def rows_mask(self, attention_mask, dtype, kv: int, rep: int, n: int, t: int) -> Tensor | None:
        """The rows' own part's additive mask, query heads of a key/value head side by side and keys padded to
        ``KEY_ALIGN``: the layers share one attention mask, so it is laid out at the first layer only."""
        if attention_mask is None:
            return None
        if self._mask is None or self._mask[0] is not attention_mask:
            mask = attention_mask[..., :t].to(dtype)
            mask = mask.repeat(1, 1, rep, 1) if mask.shape[1] == 1 else mask.reshape(mask.shape[0], kv, rep * n, t)
            self._mask = (attention_mask, pad_mask(mask, -t % KEY_ALIGN))
        return self._mask[1]


def _merge_prefixes(query, out, lse_row, plan: Plan, layer: int, scale) -> None:
    """Every task's prefix part for its rows' real tokens, merged in place into the rows' part ``out`` (b * q, h, hd)
    with its log-sum-exp ``lse_row`` (b * q, h). The tokens' query heads that share a key/value head are laid side by
    side, (g, h) -> (1, kv, rep * g), so one product per task and key/value head meets the prefix's (1, kv, p) as it
    is: the prefix is neither copied per row nor repeated per head. The tokens are gathered and merged once for all
    the tasks of the batch; per task only the product runs (gathering and merging per task, with 8 tasks, took a
    sixth of a batch of one-line rows in bfloat16). A padded position keeps its rows-only value: its key is masked
    for every real token and read-outs take real positions, so attending a long prefix from the padding was work for
    nothing."""
    b, h, n, hd = query.shape
    flat = plan.flat
    q_all = query.transpose(1, 2).reshape(b * n, h, hd).index_select(0, flat)  # (N, h, hd), task after task
    outs, lses = [], []
    for (s, e), prefix in zip(plan.bounds, plan.prefixes, strict=True):
        pk, pv = (x.to(query.dtype) for x in prefix[layer])  # (1, kv_heads, p, hd)
        kv, g = pk.shape[1], e - s
        q = q_all[s:e].transpose(0, 1).reshape(1, kv, (h // kv) * g, hd)  # query heads of one kv head side by side
        o, lse = attend(q, pk, pv, None, scale)
        outs.append(o.reshape(h, g, hd))
        lses.append(lse.reshape(h, g))
    o_pre = torch.cat(outs, 1).transpose(0, 1)  # (N, h, hd)
    lse_pre = torch.cat(lses, 1).T  # (N, h)
    # each token has one prefix: its share of the merged softmax is e^lse_pre / (e^lse_pre + e^lse_row)
    share = torch.sigmoid(lse_pre - lse_row.index_select(0, flat))[..., None]
    merged = torch.lerp(out.index_select(0, flat), o_pre.to(out.dtype), share.to(out.dtype))  # rounds as `out` does
    out.index_copy_(0, flat, merged)


# False: the library's paths (scorer, programs) copy the prefix into every row's keys/values as transformers does
# (tests compare the two layouts by turning it off; the server's mixed batches do not ask).
ENABLED = True


def applies(backbone) -> bool:
    """Whether ``run_rows`` can run this backbone: a decoder whose attention the cascade stands in for (eager or
    ``core.attention``'s grouped one, as ``Backbone.load`` sets for Llama-family decoders)."""
    impl = backbone.model.config._attn_implementation
    return ENABLED and backbone.kind == "decoder" and impl in ("eager", attention.GROUPED, CASCADE)


def use_cascade(model) -> None:
    """Let a decoder take a plan: one on ``core.attention``'s grouped attention takes it as it is; one on eager
    attention is switched to the cascade attention (once; its eager attention when no plan is passed)."""
    global _registered
    base = model.config._attn_implementation
    if base in (attention.GROUPED, CASCADE):
        return
    if base != "eager":
        raise ValueError(f"cascade attention replaces eager attention only, not {base!r}")
    with _lock:
        if not _registered:
            from transformers import AttentionInterface
            from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

            AttentionInterface.register(CASCADE, cascade_attention)
            ALL_MASK_ATTENTION_FUNCTIONS.register(CASCADE, eager_mask)
            _registered = True
        model.config._attn_implementation = CASCADE


def run_rows(
    backbone,
    input_ids: Tensor | None,
    mask: Tensor,
    positions: Tensor,
    groups,
    inputs_embeds=None,
    past=None,
    return_cache: bool = False,
    trees: Tensor | None = None,
):
    """Hidden states (b, width, d) of rows that continue their own tasks' prefixes: ``mask`` covers the rows
    (after ``past``, the rows' own earlier keys/values, if given) and not the prefixes; ``positions`` number each
    row from its prefix's end; ``groups`` (rows, prefix) of the tasks with a prefix. With ``return_cache``, also
    the per-layer keys/values of past + rows (no prefix in them), in the rows' padded layout.

    Without ``past`` the rows' real tokens run packed, task after task, as one sequence (``shared_prefix/packed.py``;
    ``trees`` (b, n, n): each row ends in n tokens of its label words under that tree, as ``label_forms`` lays them
    out); rows continuing a past (multi-token label words) run padded, their prefixes merged in (``Plan``)."""
    from transformers import DynamicCache

    use_cascade(backbone.model)
    dev = backbone.device
    width = (input_ids if input_ids is not None else inputs_embeds).shape[1]
    valid = mask[:, -width:].bool().to(dev)
    groups = [(rows.to(dev), prefix) for rows, prefix in groups]
    packed = past is None
    if packed:
        rest = torch.ones(len(valid), dtype=torch.bool, device=dev)
        for rows, _ in groups:
            rest[rows] = False
        plan = Packed([*groups, (rest.nonzero()[:, 0], None)], valid, trees)
        input_ids = plan.pack(input_ids.to(dev)) if input_ids is not None else None
        inputs_embeds = plan.pack(inputs_embeds) if inputs_embeds is not None else None
        # a 4-D mask is taken as given: transformers would otherwise build a (tokens x tokens) causal mask for the
        # packed sequence, which the packed attention never reads (32 rows of 4,000 tokens: 32 GB of it)
        positions, mask = plan.pack(positions.to(dev)), torch.zeros(1, 1, 1, 1, device=dev)
    else:
        plan = Plan(groups, valid)
    cache = DynamicCache(ddp_cache_data=past, config=backbone.model.config) if past or return_cache else None
    out = backbone.body(
        input_ids=input_ids.to(dev) if input_ids is not None else None,
        inputs_embeds=inputs_embeds,
        attention_mask=mask.to(dev),
        position_ids=positions.to(dev),
        use_cache=cache is not None,
        **{attention.PLAN: plan},
        **({backbone._cache_kwarg: cache} if cache is not None else {}),
    )
    hidden = plan.unpack(out.last_hidden_state[0]) if packed else out.last_hidden_state
    if not return_cache:
        return hidden
    kv = [(layer.keys, layer.values) for layer in cache.layers]
    if packed:  # (1, kv_heads, N, hd) -> (b, kv_heads, width, hd)
        kv = [tuple(plan.unpack(x[0].transpose(0, 1)).transpose(1, 2) for x in layer) for layer in kv]
    return hidden, kv
