"""The language-modelling loss over the target tokens, in chunks, its gradient taken as it goes.

``F.cross_entropy(head(hidden).float(), labels)`` keeps for the backward pass, per target token, the logits over
the whole vocabulary in bfloat16 and float32 and their log-softmax (49,152 entries each on the default decoder:
about 0.5 MB a token, ~200 MB for a micro-batch of 1,024 tokens), then builds as much again for their gradients.
The head is frozen, so all the backward pass needs is the gradient for the hidden states, and for the loss
(the graph's end) that is known in the forward pass: ``(softmax(logits) - onehot(label)) @ W / n``. Computed
here ``CHUNK`` tokens at a time, nothing of the vocabulary's size outlives its chunk, and no logits are computed
twice (Liger Kernel's fused linear cross-entropy does the same on GPUs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK = 256  # target tokens a time: a chunk's float32 logits are CHUNK x vocabulary x 4 bytes (50 MB by default)


class _TargetLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor) -> Tensor:
        n = hidden.shape[0]
        total = hidden.new_zeros((), dtype=torch.float32)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, n, CHUNK):
            h, y = hidden[start : start + CHUNK], labels[start : start + CHUNK]
            logits = F.linear(h, weight, bias).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            if grad is not None:
                probs = torch.exp(logits.sub_(lse[:, None]))  # in place: the chunk's softmax
                probs[torch.arange(len(y), device=y.device), y] -= 1.0
                grad[start : start + CHUNK] = (probs.div_(n).to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(grad)
        return total / n

    @staticmethod
    def backward(ctx, upstream: Tensor):
        (grad,) = ctx.saved_tensors
        return (grad * upstream.to(grad.dtype) if grad is not None else None), None, None, None


def target_loss(hidden: Tensor, head: torch.nn.Module, labels: Tensor) -> Tensor:
    """Mean cross-entropy of ``labels`` (n,) under the frozen ``head`` (a linear layer) over ``hidden`` (n, d):
    equal to ``F.cross_entropy(head(hidden).float(), labels)``, its backward pass only through ``hidden``."""
    weight, bias = head.weight, getattr(head, "bias", None)
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        return F.cross_entropy(head(hidden).float(), labels)  # a trained head needs its own gradient
    if len(labels) == 0:
        raise ValueError("target_loss: no target tokens")
    return _TargetLoss.apply(hidden, weight, bias, labels.to(hidden.device))
