"""``SkinnyLinear`` (core/skinny.py): few-row float32 CPU inputs taken as ``(W @ x.T).T``, the same values as
``F.linear`` to float rounding, gradients included; other inputs through ``F.linear`` itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prompttune.core import skinny
from prompttune.core.skinny import SKINNY_ROWS, SkinnyLinear, use_skinny_linears


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 24), (16, 1, 24), (4, 3, 24), (SKINNY_ROWS + 1, 24)])
def test_equals_f_linear(bias, shape):
    torch.manual_seed(0)
    layer = torch.nn.Linear(24, 40, bias=bias)
    layer.__class__ = SkinnyLinear
    x = torch.randn(*shape, requires_grad=True)
    y = layer(x)
    assert y.shape == (*shape[:-1], 40) and y.is_contiguous()
    ref_x = x.detach().clone().requires_grad_(True)
    ref = F.linear(ref_x, layer.weight, layer.bias)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-5, atol=1e-5)


def test_skinny_path_taken_only_for_few_float32_rows(monkeypatch):
    """The W @ x.T product runs for few float32 rows; many rows and other dtypes go through F.linear."""
    calls = []
    real = F.linear
    monkeypatch.setattr(skinny.F, "linear", lambda *a: calls.append(a[0].shape) or real(*a))
    layer = SkinnyLinear(8, 5)
    layer(torch.randn(3, 8))
    assert calls == []
    layer(torch.randn(SKINNY_ROWS + 1, 8))
    layer.to(torch.bfloat16)(torch.randn(3, 8, dtype=torch.bfloat16))
    assert calls == [(SKINNY_ROWS + 1, 8), (3, 8)]


def test_switch_keeps_parameters_and_keys():
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2, bias=False))
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_skinny_linears(model) == 2
    assert all(type(m) is SkinnyLinear for m in (model[0], model[2]))
    assert {k: v for k, v in model.state_dict().items()}.keys() == keys.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in keys.items())
    assert use_skinny_linears(model) == 0  # already switched


def test_decoder_backbone_uses_it(tiny_backbone):
    """Every linear layer of a loaded decoder (the LM head included) is switched, and a decoding-sized forward pass
    gives the logits the plain layers give."""
    model = tiny_backbone.model
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is SkinnyLinear for m in linears)
    assert isinstance(model.get_output_embeddings(), SkinnyLinear)
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with torch.no_grad():
        skinny_logits = model(input_ids=ids).logits
        try:
            for m in linears:
                m.__class__ = torch.nn.Linear
            plain = model(input_ids=ids).logits
        finally:
            for m in linears:
                m.__class__ = SkinnyLinear
    torch.testing.assert_close(skinny_logits, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [3, SKINNY_ROWS + 1])
def test_slice_that_does_not_fold_is_one_product(dtype, rows):
    """``hidden[:, -1:]`` (rows a sequence apart, a dimension of 1 between): ``F.linear`` of it as it is takes a
    batched product with the weight copied for every row (an LM head over 146 rows: 8 GB, 14 s in bfloat16). The
    layers fold it into one 2-D product (no ``bmm``), with F.linear's values; so does a decoding step's product."""
    from torch.profiler import ProfilerActivity, profile

    from prompttune.core import decode_step

    torch.manual_seed(0)
    layer = SkinnyLinear(16, 64).to(dtype)
    x = torch.randn(rows, 5, 16, dtype=dtype)[:, -1:]
    ref = F.linear(x.reshape(rows, 16).clone(), layer.weight, layer.bias).view(rows, 1, 64)
    for run in (lambda: layer(x), lambda: decode_step._product(x, layer.weight, layer.bias)):
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            y = run()
        assert "aten::bmm" not in {e.name for e in prof.events()}
        assert y.shape == (rows, 1, 64)
        torch.testing.assert_close(y, ref, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-5)
