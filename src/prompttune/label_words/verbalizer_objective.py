"""Training a PromptModel's verbalizer read-out: cross-entropy over the labels' scores, validated by accuracy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from prompttune.core.data import Dataset
from prompttune.core.token_budget import prefix_length
from prompttune.label_words.one_pass_scores import one_pass_label_scores
from prompttune.label_words.sampled_labels import LabelSampler, sampled_loss

if TYPE_CHECKING:
    from prompttune.scorer import PromptModel, RowHeads

VAL_CACHE_BYTES = 256 * 2**20  # keys/values of validation rows' text kept between validations, at most
# Prefix + row tokens over a validation batch's rows (each row's cache holds its own copy of the prefix's keys/values):
# a custom template's 1,800-token system text made 64 short rows hold ~2.7 GB a copy. Twice scoring's bound
# (scorer.KV_TOKEN_BUDGET): at 8,192 a late template after 8 demos (675 tokens; AG News) peaked 0.3 GB higher in
# training (2.70 -> 3.02 GB, the validation rows' kept keys/values), at 16,384 it is unchanged.
VAL_KV_TOKENS = 16384
VAL_BATCH_TOKENS = 1024  # padded row tokens in one validation batch (long rows: fewer rows, bounded memory)


class VerbalizerObjective:
    """Rows are checked, rendered and tokenized here, once, before the first step (errors name the row).

    With late soft tokens (none before the input, the built-in templates' layout) the validation rows' text
    does not depend on the parameters: its keys/values are computed at the first validation and reused by
    every later one (up to ``VAL_CACHE_BYTES``), so a validation runs only the soft tokens and the answer.
    """

    metric = "accuracy"
    # The loss is a mean over rows: the Trainer may accumulate a step's gradient over parts of at most this many
    # padded tokens (long rows then hold one part's activations and keys/values at a time)
    micro_batch_tokens = 1024
    val_loss: float | None = None  # the last validation's cross-entropy (Objective.val_loss)

    def __init__(self, model: PromptModel, train: Dataset, val: Dataset, sampled_labels: int = 0, seed: int = 0):
        """sampled_labels: where the label words' later tokens are more than one chunk, each training row scores
        its own label and at most this many in all (``sampled_labels.py``; 0: every label)."""
        self.model, self.trainable = model, model.method
        self.y_val = model.label_indices(val)  # a validation label the verbalizer does not know: an error first
        self.y_train = model.label_indices(train)
        self.train, self.val = model.encode(train), model.encode(val)
        self.val_rows = len(self.val.ids)  # what the accuracy is a mean over (kept_states.standard_error)
        sample = sampled_labels and LabelSampler.applies(model)
        self.sampler = LabelSampler(model, sampled_labels, seed) if sample else None
        # a row's tokens in a step, its label words' included: micro-batches bound what a step holds
        words = self.sampler.budget if self.sampler else max((c.ids.shape[1] for c in model._cont_chunks), default=0)
        self.lengths = [len(x) + words for x in self.train.ids]
        self._val_batches: list[tuple[list[int], RowHeads | None]] | None = None
        self._shard_batches: list[tuple[list[int], RowHeads | None]] | None = None  # a data-parallel rank's part

    def begin_step(self, step: int) -> None:
        """The Trainer's step about to be taken (the label sample's seed)."""
        if self.sampler is not None:
            self.sampler.step = step

    def batch_loss(self, batch: list[int]) -> Tensor:
        rows = [self.train.ids[i] for i in batch]
        if self.sampler is not None:
            loss = sampled_loss(self.sampler, rows, batch, self.y_train[batch].tolist())
            if loss is not None:
                return loss
        scores = one_pass_label_scores(self.model, rows)  # the prefix in the rows' pass, where it can be
        if scores is None:
            scores = self.model.label_scores(rows, self.model.prefix_kv())
        return F.cross_entropy(scores, self.y_train[batch].to(scores.device))

    @torch.no_grad()
    def validate(self) -> float:
        pm = self.model
        prefix = pm.cached_prefix()
        if self._val_batches is None:
            self._val_batches = self._plan_validation(prefix)
        scores = torch.empty(len(self.val.ids), len(pm.verbalizer.labels))
        for idx, heads in self._val_batches:
            scores[idx] = pm.label_scores([self.val.ids[i] for i in idx], prefix, heads).cpu()
        # the Trainer breaks accuracy ties by it: on a few hundred rows, accuracy moves a row at a time
        self.val_loss = float(F.cross_entropy(scores, self.y_val))
        return int((scores.argmax(-1) == self.y_val).sum()) / len(self.y_val)  # exact: 11/20 is 0.55, not 0.55000001

    @torch.no_grad()
    def validate_shard(self, rank: int, world: int, reduce) -> float:
        """Accuracy over every validation row, this rank scoring every ``world``-th of them by length; ``reduce``
        sums a tensor over the ranks. Equal to ``validate()`` on one process."""
        pm = self.model
        prefix = pm.cached_prefix()
        if self._shard_batches is None:
            ids = self.val.ids
            mine = sorted(range(len(ids)), key=lambda i: len(ids[i]))[rank::world]
            self._shard_batches = self._plan_validation(prefix, rows=mine)
        counts = torch.zeros(3, dtype=torch.float64)
        for idx, heads in self._shard_batches:
            scores = pm.label_scores([self.val.ids[i] for i in idx], prefix, heads).cpu()
            counts[0] += float((scores.argmax(-1) == self.y_val[idx]).sum())
            counts[1] += len(idx)
            counts[2] += float(F.cross_entropy(scores.float(), self.y_val[idx], reduction="sum"))
        correct, n, loss = reduce(counts).tolist()
        self.val_loss = loss / n
        return float(torch.tensor(correct, dtype=torch.float32) / torch.tensor(n, dtype=torch.float32))

    def _plan_validation(
        self, prefix, batch_size: int = 64, rows: list[int] | None = None
    ) -> list[tuple[list[int], RowHeads | None]]:
        """Length-sorted batches of validation rows (default: all), each with its text's keys/values when they
        can be kept."""
        ids = self.val.ids
        order = sorted(range(len(ids)) if rows is None else rows, key=lambda i: len(ids[i]))
        # at most batch_size rows, VAL_BATCH_TOKENS padded tokens and VAL_KV_TOKENS keys/values (each row's copy of
        # the prefix counted) each
        batches: list[list[int]] = [[]]
        keep = self._text_is_constant() and all(any(t < 0 for t in x) for x in ids)
        lead = prefix_length(prefix) if keep else self.model.copied_prefix(prefix, [ids[i] for i in order])
        for i in order:
            n, width = len(batches[-1]) + 1, len(ids[i])
            full = n > batch_size or width * n > VAL_BATCH_TOKENS or (lead + width) * n > VAL_KV_TOKENS
            if batches[-1] and full:
                batches.append([])
            batches[-1].append(i)
        batches = [b for b in batches if b]
        plan, held = [], 0
        for idx in batches:
            heads = None
            if keep and held < VAL_CACHE_BYTES:
                heads = self.model.row_heads([ids[i] for i in idx], prefix)
                held += heads.nbytes
            plan.append((idx, heads))
        return plan

    def _text_is_constant(self) -> bool:
        """Whether the prefix (and so the rows' text before their soft tokens) is free of trainable parameters."""
        with torch.enable_grad():
            return not any(t.requires_grad for kv in self.model.prefix_kv() for t in kv)

    def clear_cache(self) -> None:
        self.model.clear_cache()
