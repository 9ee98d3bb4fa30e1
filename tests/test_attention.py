"""core/attention.py: grouped-query attention without repeated keys/values equals transformers' eager attention."""

from __future__ import annotations

import pytest
import torch

from prompttune.core import attention


class _Module(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.eval()


def _eager(module, q, k, v, mask, scaling):
    from transformers.models.llama.modeling_llama import eager_attention_forward

    return eager_attention_forward(module, q, k, v, mask, scaling=scaling)


@pytest.mark.parametrize("queries", [1, 2, 7, 40])  # the keys-times-queries path (few) and the other
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_attention_equals_eager(queries, dtype):
    torch.manual_seed(0)
    b, heads, kv, t, hd = 3, 6, 2, 50, 16
    q = torch.randn(b, heads, queries, hd, dtype=dtype)
    buffer = torch.randn(2, b, kv, t + 20, hd, dtype=dtype)  # a cache with room to spare: strided views
    k, v = buffer[0, :, :, :t], buffer[1, :, :, :t]
    mask = torch.zeros(b, 1, queries, t, dtype=dtype)
    mask[0, :, :, :9] = torch.finfo(dtype).min  # left padding on one row
    mask[2, :, :, -3:] = torch.finfo(dtype).min
    module = _Module(heads // kv)
    out, weights = attention.grouped_attention(module, q, k, v, mask, scaling=hd**-0.5)
    ref, ref_weights = _eager(module, q, k, v, mask, scaling=hd**-0.5)
    assert out.shape == ref.shape == (b, queries, heads, hd)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    fused = (heads // kv) * queries > attention.FEW_QUERIES  # no gradient here: PyTorch's fused attention
    assert (weights is None) == fused
    if not fused:
        assert weights.shape == ref_weights.shape
        torch.testing.assert_close(weights, ref_weights, atol=tol, rtol=tol)
        assert weights[0, :, :, :9].abs().max() == 0  # the padding gets no weight


def test_fused_attention_without_gradients_only():
    """Scoring and prefill (no gradient) take the fused kernel: outputs equal the eager path's, padded query rows
    (every key masked) stay finite; with gradients the eager path keeps its weights for the backward pass."""
    torch.manual_seed(2)
    b, heads, kv, q, hd = 2, 6, 2, 30, 16
    query = torch.randn(b, heads, q, hd)
    key, value = torch.randn(b, kv, q, hd), torch.randn(b, kv, q, hd)
    mask = torch.zeros(b, 1, q, q).masked_fill(torch.ones(q, q, dtype=torch.bool).triu(1), torch.finfo().min)
    mask[0, :, :5] = torch.finfo().min  # five padded query rows that see no key at all
    with torch.no_grad():
        fused, none = attention.attend(query, key, value, mask, None, 0.0, False)
    assert none is None and torch.isfinite(fused).all()
    query.requires_grad_(True)
    eager, weights = attention.attend(query, key, value, mask, None, 0.0, False)
    assert weights is not None
    torch.testing.assert_close(fused[:, 5:], eager.detach()[:, 5:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused[1], eager.detach()[1], atol=1e-5, rtol=1e-5)


def test_grouped_attention_gradients_equal_eager():
    torch.manual_seed(1)
    b, heads, kv, t, hd = 2, 4, 2, 12, 8
    inputs = [torch.randn(b, n, t, hd, requires_grad=True) for n in (heads, kv, kv)]
    mask = torch.zeros(b, 1, t, t).masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    module = _Module(heads // kv)
    attention.grouped_attention(module, *inputs, mask, scaling=0.3)[0].square().sum().backward()
    ours = [x.grad.clone() for x in inputs]
    for x in inputs:
        x.grad = None
    _eager(module, *inputs, mask, 0.3)[0].square().sum().backward()
    for a, b_ in zip(ours, (x.grad for x in inputs), strict=True):
        torch.testing.assert_close(a, b_, atol=1e-5, rtol=1e-5)


def test_uneven_heads_named():
    with pytest.raises(ValueError, match="5 query heads cannot share 2"):
        attention.attend(
            torch.zeros(1, 5, 1, 4), torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), None, None, 0, False
        )


def test_grouped_query_decoders_use_it(tiny_backbone):
    """The tiny decoder (4 query heads over 2 key/value heads) runs on grouped attention, and its hidden states
    equal those under transformers' eager attention."""
    model = tiny_backbone.model
    assert model.config._attn_implementation == attention.GROUPED
    ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 7, 8, 9]])
    mask = torch.tensor([[1] * 5, [0, 0, 1, 1, 1]])
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).logits
        model.config._attn_implementation = "eager"
        try:
            ref = model(input_ids=ids, attention_mask=mask).logits
        finally:
            model.config._attn_implementation = attention.GROUPED
    torch.testing.assert_close(ours[:, 2:], ref[:, 2:], atol=1e-5, rtol=1e-5)


def test_long_rows_with_gradients_take_the_fused_kernel_with_the_same_gradients():
    torch.manual_seed(3)
    b, heads, kv, q, hd = 2, 4, 2, attention.FUSED_WITH_GRAD, 8
    inputs = [torch.randn(b, n, q, hd, requires_grad=True) for n in (heads, kv, kv)]
    mask = torch.zeros(b, 1, q, q).masked_fill(torch.ones(q, q, dtype=torch.bool).triu(1), torch.finfo().min)
    mask[0, :, :, :7] = torch.finfo().min  # left padding: rows 0-6 of row 0 see no key
    out, weights = attention.attend(*inputs, mask, None, 0.0, False)
    assert weights is None  # the fused kernel, gradients and all
    grad_out = torch.randn_like(out)
    grad_out[0, :7] = 0  # padded positions feed nothing downstream, as in a model
    out.backward(grad_out)
    fused = [x.grad.clone() for x in inputs]
    for x in inputs:
        x.grad = None
    ref = _eager(_Module(heads // kv), *inputs, mask, hd**-0.5)[0]
    ref.backward(grad_out)
    torch.testing.assert_close(out[0, 7:], ref[0, 7:], atol=1e-5, rtol=1e-5)
    for a, b_ in zip(fused, (x.grad for x in inputs), strict=True):
        torch.testing.assert_close(a, b_, atol=1e-4, rtol=1e-4)


def test_few_rows_over_many_keys_with_gradients_take_the_fused_kernel_with_the_same_gradients():
    """Rows after a long constant prefix: few query tokens, FUSED_KEYS_WITH_GRAD keys or more."""
    torch.manual_seed(4)
    b, heads, kv, q, hd = 3, 4, 2, 12, 8
    t = attention.FUSED_KEYS_WITH_GRAD
    query = torch.randn(b, heads, q, hd, requires_grad=True)
    key, value = (torch.randn(b, kv, t, hd, requires_grad=True) for _ in range(2))
    mask = torch.zeros(b, 1, q, t)
    mask[..., t - q :] = mask[..., t - q :].masked_fill(torch.ones(q, q, dtype=torch.bool).triu(1), torch.finfo().min)
    mask[1, :, :, t - q : t - q + 3] = torch.finfo().min  # row 1 left-padded after the prefix
    out, weights = attention.attend(query, key, value, mask, None, 0.0, False)
    assert weights is None  # fused: no (q, t) weights held for the backward pass
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    fused = [x.grad.clone() for x in (query, key, value)]
    for x in (query, key, value):
        x.grad = None
    short, kept = attention.attend(query, key[:, :, -500:], value[:, :, -500:], mask[..., -500:], None, 0.0, False)
    assert kept is not None  # fewer keys keep the eager path
    ref = _eager(_Module(heads // kv), query, key, value, mask, hd**-0.5)[0]
    ref.backward(grad_out)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b_ in zip(fused, (x.grad for x in (query, key, value)), strict=True):
        torch.testing.assert_close(a, b_, atol=1e-4, rtol=1e-4)
