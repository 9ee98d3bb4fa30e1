"""One data-parallel training step: this rank's share of the global batch, then the trainable parameters'
gradients summed over the ranks, so every rank holds the gradient of the whole batch's loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from prompttune.distributed.context import DistContext


def backward_shard(
    ctx: DistContext,
    backward: Callable[[list[int]], torch.Tensor],
    params: Sequence[torch.nn.Parameter],
    batch: list[int],
    step: int,
    weigh: Callable[[list[int]], float] = len,
) -> torch.Tensor:
    """Backward this rank's part of ``batch`` and all-reduce; returns the global batch's loss (on every rank).

    ``backward(part)`` leaves the gradient of the part's mean loss in the parameters and returns that loss (the
    Trainer's, over micro-batches). Each part's gradient is weighted by its share of the batch, ``weigh(part) /
    weigh(batch)`` (rows by default; the target tokens of a generation loss, which is a mean over tokens), so the
    sum over the ranks is the gradient of the whole batch's loss: what one process computes. Every rank holds the
    whole global batch, so the shares need no communication. Only the trainable parameters travel (one flat
    buffer, one collective a step); the loss rides in the same buffer, so a diverged rank stops every rank at the
    same step. A parameter no rank's part reached (a multi-task step whose rows skip a task's factors) keeps no
    gradient, as in one process: the optimizer then leaves it alone (a zero gradient would still move it by
    AdamW's momentum and weight decay).
    """
    ctx.step = step + 1
    part = ctx.shard(batch)
    device = params[0].device
    value = torch.zeros(1, device=device)  # fewer rows than ranks: this rank adds nothing
    if part:
        value = backward(part).detach().float().reshape(1).to(device)
    grads = [(p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=device)) for p in params]
    reached = torch.tensor([float(p.grad is not None) for p in params], device=device)  # ranks that reached each
    share = (weigh(part) / weigh(batch)) if part else 0.0
    flat = torch.cat([torch.cat([g.float() for g in grads] + [value]) * share, reached])
    ctx.all_reduce_sum(flat)
    offset, loss_at = 0, sum(p.numel() for p in params)
    for i, p in enumerate(params):
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone() if flat[loss_at + 1 + i] > 0 else None
        offset += n
    return flat[loss_at]
