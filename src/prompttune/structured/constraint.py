"""One completion held to a grammar while it decodes: which tokens may come next, and where it must end.

Each step the decoder's logits are masked to the tokens the grammar allows (``Constraint.allowed``,
``constrained_pick``; the model still chooses among them, greedy or sampled), and the picked token is fed to the
grammar (``advance``). When the grammar is complete and allows nothing more (a JSON object closed) the completion
ends (``finished``); where it could go on or end, an end token is among the allowed ones and the model decides.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from prompttune.core.errors import DataError

_TOKENIZERS: dict[int, tuple[object, object]] = {}  # id(hf tokenizer) -> (the tokenizer, llguidance's view of it)


def ll_tokenizer(backbone):
    """llguidance's tokenizer for a backbone (built once: ~1 s), its end tokens the backbone's."""
    hf = backbone.tokenizer
    held = _TOKENIZERS.get(id(hf))
    if held is None or held[0] is not hf:
        import llguidance.hf

        ends = sorted(backbone.end_token_ids) or None
        held = (hf, llguidance.hf.from_tokenizer(hf, n_vocab=len(hf), eos_token=ends))
        _TOKENIZERS[id(hf)] = held
    return held[1]


class Constraint:
    """A grammar's state over one completion (``grammar``: from ``structured.grammar_for``)."""

    def __init__(self, backbone, grammar: str):
        from llguidance import LLMatcher

        self.matcher = LLMatcher(ll_tokenizer(backbone), grammar, log_level=0)
        if self.matcher.is_error():
            raise DataError(f"response_format: the grammar does not load: {self.matcher.get_error()}")

    def copy(self) -> Constraint:
        """An independent copy of this state (a beam that branches: each branch goes on from here alone)."""
        new = Constraint.__new__(Constraint)
        new.matcher = self.matcher.deep_copy()
        return new

    def allowed(self, vocab: int) -> Tensor:
        """(vocab,) bool: the tokens the grammar takes next (ids past the tokenizer's vocabulary: never)."""
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        out = torch.zeros(vocab, dtype=torch.bool)
        n = min(vocab, bits.shape[0])
        out[:n] = torch.from_numpy(bits[:n].astype(bool))
        return out

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise DataError(f"response_format: token {token} broke the grammar: {self.matcher.get_error()}")

    @property
    def finished(self) -> bool:
        """The grammar is complete and takes no more tokens: the completion ends here."""
        return self.matcher.is_stopped()


def constrained_pick(constraint: Constraint | None, raw: Tensor, processed: Tensor, pick) -> int:
    """``pick(logits)`` over the tokens the grammar allows (``held``)."""
    if constraint is None:
        return pick(processed)
    return pick(held(constraint, raw, processed))


def held(constraint: Constraint, raw: Tensor, processed: Tensor) -> Tensor:
    """The logits with the tokens the grammar refuses at -inf. The repetition settings (``processed``) apply where
    they leave an allowed token; where they ban all of them (the grammar's own words repeat by design), the
    grammar wins and the raw logits choose."""
    refused = ~constraint.allowed(processed.shape[-1]).to(processed.device)  # one mask a step, used for both
    logits = processed.masked_fill(refused, float("-inf"))
    if not torch.isfinite(logits).any():
        logits = raw.masked_fill(refused, float("-inf"))
    return logits
