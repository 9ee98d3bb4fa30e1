"""Beam search over one cached prefix: ``num_beams`` hypotheses per row, every row of a batch and every beam
in one forward pass per step.

Rows are left-padded after the prefix's keys/values (computed once, by the caller, for the whole batch); the
first step runs each row once, then its keys/values are copied to its beams. At each step a beam's next-token
log-probs (``log_softmax`` of the logits after the repetition settings, so that one beam is token for token
greedy decoding) are added to its score; of each row's ``2 * num_beams`` best extensions, those ending at an
end token or reaching a stop string become finished hypotheses, the rest (up to ``num_beams``) go on.

A hypothesis scores ``sum(log p) / tokens ** length_penalty`` (its tokens counted with the end token, if it
wrote one): ``length_penalty`` 1.0 (the default) ranks by mean log-prob per token, 0 by the plain sum (short
texts win), above 1 favours longer ones. A row is done once it has ``num_beams`` finished hypotheses and its
best running beam, scored at its current length, cannot beat the worst of them (transformers' rule; exact
when ``length_penalty`` is 0, as scores only fall). At ``max_new_tokens`` the running beams finish as they
are. The best-scoring finished hypothesis is the row's text, cut before its first stop string.

With a grammar (``config.grammar``: ``response_format``, ``--json-schema``) every beam holds its own state of it
(``structured.Constraint``, copied when a beam branches): a beam extends only by the tokens its state allows, and
a beam whose text completes the grammar is a finished hypothesis. So every hypothesis, and the text, is held to
the grammar (cut short by ``max_new_tokens`` it is incomplete, as greedy decoding's is).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from prompttune.core.backbone import KV, Backbone

NEG = float("-inf")


class Hypotheses:
    """A row's finished hypotheses: the ``n`` best by length-normalized score."""

    def __init__(self, n: int, length_penalty: float):
        self.n, self.length_penalty = n, length_penalty
        self.items: list[tuple[float, list[int]]] = []

    def score(self, total: float, length: int) -> float:
        return total / max(1, length) ** self.length_penalty

    def add(self, total: float, tokens: list[int], length: int) -> None:
        self.items.append((self.score(total, length), tokens))
        self.items.sort(key=lambda x: -x[0])
        del self.items[self.n :]

    def done(self, best_running: float, length: int) -> bool:
        if len(self.items) < self.n:
            return best_running == NEG
        return best_running == NEG or self.items[-1][0] >= self.score(best_running, length)

    def best(self) -> list[int]:
        return self.items[0][1] if self.items else []


def _stops(text: str, stop: tuple[str, ...]) -> bool:
    return any(s in text for s in stop)


def _cut(text: str, stop: tuple[str, ...]) -> str:
    cut = min((j for j in (text.find(s) for s in stop) if j >= 0), default=-1)
    return text[:cut] if cut >= 0 else text


@torch.no_grad()
def beam_search(
    backbone: Backbone,
    rows: list[list[int]],
    prefix: KV | None,
    embed: Callable[[Tensor], tuple[Tensor | None, Tensor | None]],
    config,
) -> list[str]:
    """The best beam's text for each row (token ids after ``prefix``); ``config`` a ``GenerationConfig``."""
    n, tok = config.num_beams, backbone.tokenizer
    p = prefix[0][0].shape[2] if prefix else 0
    b, width = len(rows), max(len(r) for r in rows)
    pad = tok.pad_token_id or 0
    ids = torch.full((b, width), pad, dtype=torch.long)
    mask = torch.zeros(b, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    positions = (p + mask.cumsum(1) - 1).clamp(min=p)
    attention = torch.cat([torch.ones(b, p, dtype=torch.long), mask], dim=1)
    limit = max(0, min(config.max_new_tokens, backbone.max_length - p - width))
    head = backbone.model.get_output_embeddings()
    processors = config.processors()
    ends = set(backbone.end_token_ids)
    input_ids, embeds = embed(ids)
    hidden, cache = backbone.run(input_ids, attention, positions, prefix, inputs_embeds=embeds, return_cache=True)
    beam_rows = torch.arange(b).repeat_interleave(n)  # beam k of row i is i * n + k
    dev = hidden.device
    cache = [(k[beam_rows.to(dev)], v[beam_rows.to(dev)]) for k, v in cache]
    attention, positions = attention[beam_rows], positions[beam_rows][:, -1:]
    logits = head(hidden[:, -1]).float()[beam_rows.to(dev)]  # (b * n, vocab)
    vocab = logits.shape[-1]
    seqs: list[list[int]] = [[] for _ in range(b * n)]
    # a beam's grammar state (None: no grammar, or a dead beam); beam 0 of each row is its one live beam at first
    states = [config.constraint(backbone) if k == 0 else None for _ in range(b) for k in range(n)]
    held_to = states[0] is not None
    if held_to:
        from prompttune.structured.constraint import held  # as GenerationConfig.constraint: only with a grammar
    scores = torch.full((b, n), NEG)
    scores[:, 0] = 0.0  # one live beam per row at first: its copies would only repeat it
    finished = [Hypotheses(n, config.length_penalty) for _ in range(b)]
    done = [False] * b
    for step in range(limit):
        raw = logits
        if processors:
            logits = processors(torch.tensor(seqs, dtype=torch.long, device=dev).reshape(b * n, step), logits)
        if held_to:  # dead beams keep their logits: their -inf score keeps them out, and no row is all -inf
            logits = torch.stack([held(c, raw[g], logits[g]) if c else logits[g] for g, c in enumerate(states)])
        total = (scores.to(dev).reshape(-1, 1) + torch.log_softmax(logits, -1)).reshape(b, n * vocab)
        top_scores, top_idx = total.topk(min(2 * n, n * vocab), dim=1)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
        new_scores = torch.full((b, n), NEG)
        source, new_seqs, new_states = [], [], []
        for i in range(b):
            kept = 0
            for s, idx in zip(top_scores[i], top_idx[i], strict=True) if not done[i] else ():
                if s == NEG or kept == n:
                    break
                g = i * n + idx // vocab
                t, seq = idx % vocab, seqs[g] + [idx % vocab]
                state = None
                if held_to and t not in ends:
                    state = states[g].copy()
                    state.advance(t)
                if t in ends:
                    finished[i].add(s, seqs[g], len(seq))
                elif config.stop and _stops(tok.decode(seq, skip_special_tokens=True), config.stop):
                    finished[i].add(s, seq, len(seq))
                elif state is not None and state.finished:  # the grammar is complete: nothing may follow
                    finished[i].add(s, seq, len(seq))
                else:
                    new_scores[i, kept] = s
                    source.append(g)
                    new_seqs.append(seq)
                    new_states.append(state)
                    kept += 1
            for _ in range(kept, n):  # dead beams keep the shape: a pad token, a score of -inf
                source.append(i * n)
                new_seqs.append(seqs[i * n] + [pad])
                new_states.append(None)
            done[i] = done[i] or finished[i].done(float(new_scores[i].max()), step + 1)
        scores, seqs, states = new_scores, new_seqs, new_states
        if all(done) or step + 1 == limit:
            break
        src = torch.tensor(source, device=dev)
        cache = [(k[src], v[src]) for k, v in cache]
        nxt = torch.tensor([s[-1] for s in seqs])[:, None]
        positions = positions + 1
        attention = torch.cat([attention, torch.ones(b * n, 1, dtype=torch.long)], dim=1)
        hidden, cache = backbone.run(nxt, attention, positions, cache, return_cache=True)
        logits = head(hidden[:, -1]).float()
    for i in range(b):  # max_new_tokens (or the context's end): running beams finish as they are
        if not done[i]:
            for k in range(n):
                if scores[i, k] > NEG:
                    finished[i].add(float(scores[i, k]), seqs[i * n + k], len(seqs[i * n + k]))
    texts = [tok.decode(finished[i].best(), skip_special_tokens=True) for i in range(b)]
    return [_cut(t, config.stop) for t in texts] if config.stop else texts
