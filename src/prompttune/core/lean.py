"""Leaner backward passes for two blocks of a frozen Llama-family decoder: RMSNorm and the SwiGLU MLP.

Training a prompt runs the whole frozen decoder forward and backward, and autograd keeps, per token and layer,
what each elementary operation needs for its own backward pass. Measured on the default decoder in bfloat16:
~650 KB a token of activations, of which RMSNorm's float32 copy of its input (2 x 2.3 KB a layer) and the MLP's
``silu(gate)`` (3 KB a layer: kept besides ``gate`` and ``up``) are the parts nothing needs. Here:

- RMSNorm (``_RMSNorm``) keeps its bfloat16 input and one float per row (the inverse root mean square), and takes the
  gradient in closed form, ``r * (g - n * mean(g * n))`` with ``n = x * r``, instead of autograd's chain
  through ``pow``, ``mean``, ``rsqrt`` and two casts;
- the MLP (``_SwiGLU``) keeps ``gate`` and ``up`` only and recomputes ``silu(gate)`` in the backward pass (the same
  kernels as autograd's, so its gradients are bit for bit autograd's).

Forward outputs are unchanged bit for bit (the same operations in the same order). Without gradients (decoding,
scoring) the modules run transformers' own code. Only where the weights are frozen: a norm or MLP whose
weights train keeps transformers' forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        xf = x.float()
        r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, r, weight)
        return weight * (xf * r).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, r, weight = ctx.saved_tensors
        n = x.float() * r
        g = (grad * weight).float()
        return (r * (g - n * (g * n).mean(-1, keepdim=True))).to(x.dtype), None, None


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: Tensor, up: Tensor) -> Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: Tensor):
        gate, up = ctx.saved_tensors
        return torch.ops.aten.silu_backward(grad * up, gate), grad * F.silu(gate)


def _needs_lean(x: Tensor, *weights: Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad and not any(w.requires_grad for w in weights)


def _norm_forward(self, hidden_states: Tensor) -> Tensor:
    if _needs_lean(hidden_states, self.weight):
        return _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)
    return self._transformers_forward(hidden_states)


def _mlp_forward(self, x: Tensor) -> Tensor:
    weights = (self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)
    if _needs_lean(x, *weights):
        return self.down_proj(_SwiGLU.apply(self.gate_proj(x), self.up_proj(x)))
    return self._transformers_forward(x)


def _is_norm(module) -> bool:
    return type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon")


def _is_swiglu(module, act: str | None) -> bool:
    parts = ("gate_proj", "up_proj", "down_proj")
    return act == "silu" and type(module).__name__.endswith("MLP") and all(hasattr(module, p) for p in parts)


_LEAN_CLASSES: dict[type, type] = {}


def _lean_class(cls: type, forward) -> type:
    """A subclass of transformers' module class (same name) whose forward is ``forward``; transformers' own
    stays reachable as ``_transformers_forward``. A class, not a patched instance: copies of the model keep it."""
    if cls not in _LEAN_CLASSES:
        body = {"forward": forward, "_transformers_forward": cls.forward, "_prompttune_lean": True}
        _LEAN_CLASSES[cls] = type(cls.__name__, (cls,), {**body, "__module__": cls.__module__})
    return _LEAN_CLASSES[cls]


def use_lean_blocks(model: torch.nn.Module, config) -> int:
    """Give the decoder's RMSNorm and SwiGLU MLP modules the lean backward (the caller checks the architecture:
    Llama-family norms and MLPs, no soft-capping). Returns how many modules changed."""
    act = getattr(config, "hidden_act", None)
    changed = 0
    for module in model.modules():
        if getattr(type(module), "_prompttune_lean", False):
            continue
        lean = _norm_forward if _is_norm(module) else _mlp_forward if _is_swiglu(module, act) else None
        if lean is not None:
            module.__class__ = _lean_class(type(module), lean)
            changed += 1
    return changed
