"""Training on many label words of several tokens: each row scores its own label and a seeded sample of others.

Where the label words' 2nd.. tokens are more than one chunk (``label_forms.CONTINUATION_CHUNK``, 256 tokens: e.g.
150 labels of two to five words, or several words per label), scoring every label for every row takes a pass
of rows x chunk tokens per chunk, with gradients, each recomputed in the backward pass: the cost of a step grows
with the number of labels. Here a step scores, for each row, its own label and other labels drawn at random,
seeded by the run's seed, the step and the row (the same draw on any number of processes), as many as fit one
chunk of continuation tokens and at most ``labels_per_row`` labels, in the rows' own pass
(``label_forms.inline_mask``); the loss is the cross-entropy over that sample (a sampled softmax). The sampled
labels' scores are exactly ``PromptModel.label_scores``'s (a test checks). Validation and inference score every
label. Label words within one chunk are all scored at every step (exact): on DBpedia-14 with descriptive words
of ~7 later tokens (100 in all), samples of at most 64 tokens (about half the labels) trained to 0.948 held-out
against 0.968 for every label in the same 100 steps, so sampling is kept for where every label costs too much.
Above one chunk (the same task with four forms per label, 379 later tokens), 60 steps: 0.916 sampled against
0.920 for every label, at 2.2 against 1.0 examples/s (measurements: README, "How it is fast").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from prompttune.core.backbone import KV
from prompttune.label_words import label_forms
from prompttune.label_words.label_forms import ContinuationChunk, continuation_chunks
from prompttune.scorer import PromptModel

FAR = -1.0e4  # the score of a form or label outside a row's sample (finite: no NaN in the backward pass)


class LabelSampler:
    """Which labels each training row scores at a step: its own, then others in a seeded random order while
    their words' continuation tokens fit one chunk (``budget``), up to ``labels_per_row``."""

    def __init__(self, model: PromptModel, labels_per_row: int, seed: int):
        if labels_per_row < 2:
            raise ValueError(f"--sampled-labels {labels_per_row}: must be at least 2 (or 0: every label).")
        self.model, self.labels_per_row, self.seed = model, labels_per_row, seed
        n_labels = len(model.verbalizer.labels)
        self.forms_of: list[list[int]] = [[] for _ in range(n_labels)]
        for f, li in enumerate(model.form_label.tolist()):
            self.forms_of[li].append(f)
        self.steps = [sum(len(model.form_token_ids[f]) - 1 for f in forms) for forms in self.forms_of]
        self.budget = label_forms.CONTINUATION_CHUNK  # later tokens of a row's sampled words, at most
        self.step = 0  # the training step being taken (``VerbalizerObjective.begin_step``)

    @staticmethod
    def applies(model: PromptModel) -> bool:
        """Whether the label words' later tokens are more than one chunk (the only case sampling is for)."""
        return len(model._cont_chunks) > 1

    def sets(self, rows: list[int], gold: list[int]) -> list[list[int]] | None:
        """Per row (its index among the training rows, its label): the labels it scores, its own first. None
        where a row's own label has more continuation tokens than one chunk (then every label is scored)."""
        out = []
        n_labels = len(self.steps)
        for i, g in zip(rows, gold, strict=True):
            if self.steps[g] > self.budget:
                return None
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.step) * 1_000_033 + i)
            chosen, used = [g], self.steps[g]
            for li in torch.randperm(n_labels, generator=gen).tolist():
                if len(chosen) == self.labels_per_row:
                    break
                if li != g and used + self.steps[li] <= self.budget:
                    chosen.append(li)
                    used += self.steps[li]
            out.append(chosen)
        return out

    def chunk(self, labels: list[int]) -> ContinuationChunk | None:
        """The later tokens of these labels' words as one chunk whose ``assign`` columns are the model's forms
        (None: every word is one token). Built for each row and step: samples rarely repeat."""
        pm = self.model
        forms = [f for li in labels for f in self.forms_of[li]]
        found = continuation_chunks([pm.form_token_ids[f] for f in forms], [pm.form_tokens[f] for f in forms])
        if not found:
            return None
        (c,) = found  # at most one chunk's steps
        assign = torch.zeros(c.assign.shape[0], len(pm.form_tokens))
        assign[:, forms] = c.assign
        return ContinuationChunk(c.ids, c.depth, c.target, c.visible, assign).to(pm.backbone.device)

    def scores(self, batch: list[list[int]], prefix: KV, sets: list[list[int]]) -> Tensor:
        """(b, k) scores of each row's sampled labels (``sets``, padded with ``FAR``), as ``label_scores`` gives
        them, in one pass: each row's sampled words after it."""
        pm = self.model
        past = prefix
        if pm.late_split(batch, prefix) is not None:  # the text before the soft tokens runs without gradients
            heads = pm.row_heads(batch, prefix)
            ids, attention, positions = pm.tail_inputs(heads)
            past = heads.cache
        else:
            ids, attention, positions = pm._pad_left(batch, prefix[0][0].shape[2] if prefix else 0)
        chunks = [self.chunk(s) for s in sets]
        form_scores = pm.inline_form_scores(ids, attention, positions, past, chunks, [1] * len(batch))
        return self._label_scores(form_scores, sets)

    def _label_scores(self, form_scores: Tensor, sets: list[list[int]]) -> Tensor:
        """(b, k) each sampled label's score from its forms' (as ``PromptModel._forms_to_labels``)."""
        b, n_forms = form_scores.shape
        k = max(len(s) for s in sets)
        member = torch.zeros(b, k, n_forms, dtype=torch.bool, device=form_scores.device)
        real = torch.zeros(b, k, dtype=torch.bool, device=form_scores.device)
        count = torch.ones(b, k, device=form_scores.device)
        for r, labels in enumerate(sets):
            for j, li in enumerate(labels):
                member[r, j, self.forms_of[li]] = True
                real[r, j] = True
                count[r, j] = len(self.forms_of[li])
        picked = torch.where(member, form_scores[:, None, :], torch.full_like(form_scores[:, None, :], FAR))
        out = torch.logsumexp(picked, dim=-1) - count.log()
        return torch.where(real, out, torch.full_like(out, FAR))


def sampled_loss(sampler: LabelSampler, batch: list[list[int]], rows: list[int], gold: list[int]) -> Tensor | None:
    """The cross-entropy of each row's own label over its sample; None where sampling does not apply."""
    sets = sampler.sets(rows, gold)
    if sets is None:
        return None
    scores = sampler.scores(batch, sampler.model.prefix_kv(), sets)
    return F.cross_entropy(scores, torch.zeros(len(batch), dtype=torch.long, device=scores.device))


__all__ = ["LabelSampler", "sampled_loss"]
