"""Draft tokens for prompt-lookup decoding (speculative decoding without a draft model).

A decoding step of the default decoder costs nearly the same for a few tokens per row as for one (the weights are
read once a step: in bfloat16 on this 2-core CPU, 16 rows took 61 ms for 1 token each and 80 ms for 3), so a step
can check guesses at the next tokens for free-ish: the row's next inputs are its last token and up to ``k``
drafted tokens, and every drafted token that equals what greedy decoding chooses at its place is kept, plus the
token chosen after the last kept one. Greedy output is unchanged (up to float rounding of a wider product).

The drafts come from n-grams already seen (Saxena's prompt lookup decoding, vLLM's ``ngram`` speculator): for n
= 3, 2, 1 in turn, the row's last n tokens are looked up first (n >= 2) in what this call has written so far, over
all rows (data-to-text outputs repeat their phrasing from row to row: "... is a coffee shop near ... in the
riverside area"), then earlier in the row's own input and output (names and values copied from the input); the
first match gives the draft.
"""

from __future__ import annotations

LONGEST_NGRAM = 3
SHORTEST_NGRAM = 1  # a single token looked up in the row itself


class NgramDrafts:
    """What followed each 2- and 3-gram in the text written so far (the latest continuation wins)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.table: dict[tuple[int, ...], list[int]] = {}

    def note(self, written: list[int]) -> None:
        """Index a row's text after it grew: only the n-grams whose continuation changed (the last few)."""
        size = len(written)
        for n in range(2, LONGEST_NGRAM + 1):
            for s in range(max(0, size - n - self.k), size - n):
                self.table[tuple(written[s : s + n])] = written[s + n : s + n + self.k]

    def propose(self, context: list[int], limit: int) -> list[int]:
        """Up to ``min(k, limit)`` tokens that may follow ``context`` (the row's input then its output)."""
        limit = min(self.k, limit)
        if limit <= 0:
            return []
        for n in range(LONGEST_NGRAM, SHORTEST_NGRAM - 1, -1):
            if len(context) <= n:
                continue
            key = tuple(context[-n:])
            if n > 1 and key in self.table:
                return self.table[key][:limit]
            for s in range(len(context) - n - 1, -1, -1):  # the latest earlier occurrence in the row itself
                if tuple(context[s : s + n]) == key:
                    return context[s + n : s + n + limit]
        return []
