"""core/lean.py: RMSNorm and SwiGLU MLP blocks that keep less for backward give transformers' outputs and
gradients, and keep less."""

from __future__ import annotations

import copy

import pytest
import torch

from prompttune.core import lean


def _plain(model):
    """The model with transformers' own module classes back (a copy)."""
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if getattr(type(m), "_prompttune_lean", False):
            m.__class__ = type(m).__mro__[1]
    return plain


def _run(model, embeds):
    x = embeds.clone().requires_grad_(True)
    out = model(inputs_embeds=x).last_hidden_state
    out.square().mean().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_outputs_equal_and_gradients_match_transformers(tiny_backbone, dtype):
    body = copy.deepcopy(tiny_backbone.body).to(dtype)  # copies keep the lean classes
    kinds = {type(m).__name__ for m in body.modules() if getattr(type(m), "_prompttune_lean", False)}
    assert kinds == {"LlamaRMSNorm", "LlamaMLP"}
    plain = _plain(body)
    assert not any(getattr(type(m), "_prompttune_lean", False) for m in plain.modules())
    torch.manual_seed(0)
    embeds = torch.randn(2, 7, tiny_backbone.hidden_size, dtype=dtype)
    out, grad = _run(body, embeds)
    ref_out, ref_grad = _run(plain, embeds)
    assert torch.equal(out, ref_out)  # the forward pass is the same operations in the same order
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(grad, ref_grad, atol=tol, rtol=tol)


def test_blocks_keep_less_for_backward():
    """What autograd keeps for one RMSNorm + MLP, counted with saved-tensor hooks: the float32 copy of the norm's
    input and silu(gate) are no longer kept."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    cfg = LlamaConfig(hidden_size=64, intermediate_size=256, hidden_act="silu")
    block = torch.nn.Sequential(LlamaRMSNorm(64), LlamaMLP(cfg)).to(torch.bfloat16).requires_grad_(False)

    def kept(module) -> int:
        total = []
        x = torch.randn(32, 64, dtype=torch.bfloat16, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: total.append(t) or t, lambda t: t):
            module(x).sum().backward()
        weights = {p.data_ptr() for p in module.parameters()}
        return sum(t.numel() * t.element_size() for t in total if t.data_ptr() not in weights)

    before = kept(block)
    assert lean.use_lean_blocks(block, cfg) == 2
    after = kept(block)
    assert after < 0.6 * before, (before, after)


def test_trained_weights_and_no_grad_use_transformers_forward(tiny_backbone):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(8)
    lean.use_lean_blocks(norm, LlamaConfig(hidden_act="silu"))
    x = torch.randn(3, 8, requires_grad=True)
    norm(x).sum().backward()  # the weight trains: transformers' forward, the weight gets its gradient
    assert norm.weight.grad is not None
    with torch.no_grad():
        assert torch.equal(norm(x), LlamaRMSNorm.forward(norm, x))
