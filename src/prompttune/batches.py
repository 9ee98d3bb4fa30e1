"""A training epoch's batches: seeded, length-bucketed; and a batch cut into micro-batches within a token budget.
(Used by the Trainer, ``train.py``, which re-exports both.)"""

from __future__ import annotations

import torch


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """A seeded order for one epoch: shuffle, sort chunks of 32 batches by length, shuffle the batches.

    Rows of similar length share a batch (little padding) while each epoch's order stays random.
    """
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    chunk = batch_size * 32
    batches = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in perm]


def grouped_batches(
    groups: list[list[int]], lengths: list[int], batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """An epoch's batches that each hold one group's examples (e.g. one task's rows), seeded and length-bucketed
    within a group, in a shuffled order across groups.

    The rows a group leaves over (its size mod ``batch_size``) are pooled into mixed batches at the end, so an
    epoch has exactly ``ceil(len(lengths) / batch_size)`` batches, as ``epoch_batches`` gives (resume counts on it).
    """
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    full, left = [], []
    for group in groups:
        order = [group[i] for i in torch.randperm(len(group), generator=gen).tolist()]
        cut = len(order) - len(order) % batch_size
        left += order[cut:]
        chunk = batch_size * 32
        for c in range(0, cut, chunk):
            part = sorted(order[c : min(c + chunk, cut)], key=lambda i: lengths[i])
            full += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    left.sort(key=lambda i: lengths[i])
    batches = full + [left[i : i + batch_size] for i in range(0, len(left), batch_size)]
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in perm]


def objective_batches(objective, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """An epoch's batches for ``objective``: its own ``epoch_batches(batch_size, seed, epoch)`` when it declares
    one (it must give ``ceil(len(lengths) / batch_size)`` batches), else ``epoch_batches`` over its lengths."""
    own = getattr(objective, "epoch_batches", None)
    return (
        own(batch_size, seed, epoch) if own is not None else epoch_batches(objective.lengths, batch_size, seed, epoch)
    )


def micro_batches(batch: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive parts of a batch, each at most ``budget`` padded tokens (rows x its longest; a longer row is a
    part of its own). A batch within the budget is one part."""
    parts: list[list[int]] = [[]]
    width = 0
    for i in batch:
        if parts[-1] and max(width, lengths[i]) * (len(parts[-1]) + 1) > budget:
            parts.append([])
            width = 0
        parts[-1].append(i)
        width = max(width, lengths[i])
    return parts


def loss_weight_of(objective, batch: list[int]) -> float:
    """How many units ``objective``'s loss on ``batch`` is a mean over: its ``loss_weight`` if it declares one
    (e.g. target tokens), else the rows."""
    weigh = getattr(objective, "loss_weight", None)
    return float(weigh(batch)) if weigh is not None else float(len(batch))


def activation_tokens(tokens: int, backbone) -> int:
    """A micro-batch budget set in 16-bit tokens, for ``backbone``'s dtype: the same bytes of activations a part
    (float32 activations take twice the bytes of bfloat16's: half the tokens)."""
    return max(1, tokens * 2 // max(2, backbone.model.dtype.itemsize))
