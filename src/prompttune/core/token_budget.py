"""How many rows a pass takes: at most so many padded tokens, and so many keys/values with every row's copy of
the prefix counted.

transformers' cache concatenates a constant prefix's keys/values onto every row's own (once for the rows' text and
again for what continues it), so each row of a pass holds a copy of the whole prefix at every layer. With a long
prefix (a custom template's 1,800-token system text) 64 short validation rows held ~2.7 GB a copy in bfloat16;
counting prefix + row tokens over the rows (``scorer.KV_TOKEN_BUDGET``, 8,192: ~190 MB a copy) bounds it.
"""

from __future__ import annotations


def token_budget_parts(batch: list[list[int]], budget: int, prefix: int = 0, kv_budget: int | None = None):
    """Consecutive parts of a batch, each at most ``budget`` padded tokens and, given ``kv_budget``, at most that
    many keys/values with every row's copy of a ``prefix``-token prefix counted (a longer row: a part of its own)."""
    parts: list[list[list[int]]] = [[]]
    for x in batch:
        width = max([len(x)] + [len(y) for y in parts[-1]])
        rows = len(parts[-1]) + 1
        over = width * rows > budget or (kv_budget is not None and (prefix + width) * rows > kv_budget)
        if parts[-1] and over:
            parts.append([])
        parts[-1].append(x)
    return parts


def prefix_length(prefix) -> int:
    """Positions of a per-layer keys/values prefix (0 for none)."""
    return prefix[0][0].shape[2] if prefix else 0
