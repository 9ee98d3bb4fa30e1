"""PromptModel: a backbone, a template, a method and a verbalizer, scored the fast way.

The fast path (what PEFT does not do):
- the task's constant prefix (system text, soft tokens, instructions) is run once per training step at batch
  size 1 and its keys/values expanded over the batch; at inference it is cached, and rows of one-token label
  words attend one copy of it (shared_prefix/); rows are left-padded, every answer position the last one;
- only the answer positions are read out, and only through the LM head's rows of the label tokens;
- multi-token labels: the label words' later tokens run in the rows' own pass, after each row under a tree
  mask (one pass a batch, where a continuation pass over the rows' keys/values doubled the weight-bound part);
  with many words (over ``INLINE_TOKENS``), in chunks over one shared copy of the rows' keys/values
  (label_forms.py);
- bounded training memory: soft tokens placed after the input ("late") train with the input's text run
  under no_grad; rows that carry gradients are taken in parts of ROW_TOKEN_BUDGET padded tokens, each
  recomputed in the backward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor

from prompttune import shared_prefix
from prompttune.core.backbone import KV, Backbone
from prompttune.core.data import Dataset, Row
from prompttune.core.errors import DataError, ModelError
from prompttune.core.generate import GenerationConfig, Generator
from prompttune.core.template import CompiledTemplate, SoftSlot, Template
from prompttune.core.token_budget import prefix_length, token_budget_parts
from prompttune.core.verbalizer import CONTENT_FREE, Verbalizer
from prompttune.label_words.label_forms import (
    INLINE_TOKENS,
    ContinuationChunk,
    chunk_scores,
    continuation_chunks,
    inline_layout,
    with_label_tokens,
)
from prompttune.methods import SoftPromptMethod
from prompttune.prefix import PrefixModel

MAX_VIRTUAL_TOKENS = 256  # soft tokens in a template at most: attention over them grows with their square
MAX_LABEL_FORMS = 4096  # label words (over all labels) at most


ROW_TOKEN_BUDGET = 1024  # padded row tokens whose activations a training step holds at once
SCORE_TOKEN_BUDGET = 8192  # padded row tokens scored at once at inference (keys/values of long rows)
KV_TOKEN_BUDGET = 8192  # prefix + row tokens over a scoring pass's rows (core/token_budget.py says why)


@dataclass
class RowHeads:
    """Rows' text before their soft tokens, already run: its keys/values (after the prefix's) and layout."""

    cache: KV
    attention: Tensor  # (b, prefix + text) 1 where a token is real
    positions: Tensor  # (b, text)
    tails: list[list[int]]  # each row's soft tokens and what follows them
    prefix_len: int

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.cache)


@dataclass
class Encoded:
    """Token ids of each row's part (after the constant prefix)."""

    ids: list[list[int]]


class PromptModel(PrefixModel):
    generates = True  # it can write text after its prompt

    def __init__(
        self,
        backbone: Backbone,
        template: Template,
        verbalizer: Verbalizer,
        method_factory: Callable[[list[SoftSlot], dict], SoftPromptMethod],
        num_virtual_tokens: int,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if backbone.kind != "decoder":
            raise ModelError(
                f"--model {backbone.model_id}: an encoder has no LM head to score label words with; "
                "verbalizer read-outs need a decoder (e.g. the default, smollm2)."
            )
        self.backbone = backbone
        self.template = template
        self.verbalizer = verbalizer
        self.compiled: CompiledTemplate = template.compile(
            backbone.tokenizer,
            verbalizer.display_words,
            num_virtual_tokens,
            dict(zip(verbalizer.labels, verbalizer.display_words, strict=True)),
        )
        slots = [s for s in self.compiled.prefix if isinstance(s, SoftSlot)] + self.compiled.row_slots
        n_soft = sum(s.size for s in slots)
        if n_soft > MAX_VIRTUAL_TOKENS:
            raise ModelError(
                f"--num-virtual-tokens {num_virtual_tokens}: the template then has {n_soft} soft tokens, more than "
                f"the limit of {MAX_VIRTUAL_TOKENS} (each step's memory grows with their square). Use fewer "
                "virtual tokens, or smaller [soft:N] slots."
            )
        self.method = method_factory(slots, {"generator": generator, "label_words": verbalizer.display_words})
        self.method.to(backbone.device)  # initialised on the CPU (the same draws everywhere), then moved
        self.index_row_soft_tokens()
        self.segments = self.tokenize_prefix()
        self._build_label_tokens()

    # --- setup ------------------------------------------------------------------------------
    @property
    def prefix_length(self) -> int:
        hard = sum(len(s) for s in self.segments if not isinstance(s, SoftSlot))
        return hard + sum(s.size for s in self.segments if isinstance(s, SoftSlot))

    def _build_label_tokens(self) -> None:
        forms = self.verbalizer.forms()
        if len(forms) > MAX_LABEL_FORMS:
            raise DataError(
                f"verbalizer: {len(self.verbalizer.labels)} labels with {len(forms)} label words in all, more than "
                f"the limit of {MAX_LABEL_FORMS}; use fewer labels or words per label (or train a head: --head "
                "classification)."
            )
        tokens = [self.backbone.tokenize(self.compiled.label_text(w)) for _, w in forms]
        for (li, w), t in zip(forms, tokens, strict=True):
            if not t:
                raise DataError(f"verbalizer: the word {w!r} for label {self.verbalizer.labels[li]!r} has no tokens.")
        cand = sorted({t for ts in tokens for t in ts})
        pos = {t: i for i, t in enumerate(cand)}
        dev = self.backbone.device  # every read-out tensor lives beside the backbone's LM head
        self.register_buffer("candidates", torch.tensor(cand, device=dev), persistent=False)
        self.form_label = torch.tensor([li for li, _ in forms], device=dev)
        self.form_tokens = [[pos[t] for t in ts] for ts in tokens]  # candidate indices per form
        self.form_token_ids = tokens
        self.form_first = torch.tensor([t[0] for t in self.form_tokens], device=dev)
        self.max_form_len = max(len(t) for t in tokens)
        self._cont_chunks = [c.to(dev) for c in continuation_chunks(tokens, self.form_tokens)]

    # --- encoding -----------------------------------------------------------------------------
    def encode(self, dataset: Dataset | Sequence[Row]) -> Encoded:
        """Render and tokenize rows, checking each fits the model's context."""
        rows = dataset.rows if isinstance(dataset, Dataset) else list(dataset)
        budget = self.backbone.max_length - self.prefix_length - self.max_form_len
        ids = []
        for row in rows:
            missing = [v for v in self.template.variables if v not in row.fields]
            if missing:
                raise DataError(f"{row.where()}: missing field {missing[0]!r} (the template uses it).")
            t = self.row_ids(self.compiled.render_row(row.fields))
            if len(t) > budget:
                raise DataError(
                    f"{row.where()}: the prompt is {len(t) + self.prefix_length + self.max_form_len} tokens, "
                    f"longer than the model's context ({self.backbone.max_length}). Shorten the text or the "
                    "template, or use fewer virtual tokens."
                )
            ids.append(t)
        return Encoded(ids)

    def label_indices(self, dataset: Dataset | Sequence[Row]) -> Tensor:
        rows = dataset.rows if isinstance(dataset, Dataset) else list(dataset)
        return torch.tensor([self.verbalizer.index(r.label or "", r.where()) for r in rows])

    @property
    def trainable(self) -> SoftPromptMethod:
        """What the Trainer trains and saves: the method's parameters."""
        return self.method

    # --- scoring ------------------------------------------------------------------------------
    def _pad_left(self, batch: list[list[int]], prefix_len: int) -> tuple[Tensor, Tensor, Tensor]:
        width = max(len(x) for x in batch)
        pad = self.backbone.tokenizer.pad_token_id
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, x in enumerate(batch):
            if x:
                ids[i, width - len(x) :] = torch.tensor(x)
                mask[i, width - len(x) :] = 1
        positions = (prefix_len + mask.cumsum(1) - 1).clamp(min=prefix_len)
        attention = torch.cat([torch.ones(len(batch), prefix_len, dtype=torch.long), mask], dim=1)
        return ids, attention, positions

    def label_scores(self, batch: list[list[int]], prefix: KV, heads: RowHeads | None = None) -> Tensor:
        """(b, n_labels) log-likelihood of each label, normalized over the label tokens.

        heads: the rows' text already run (``row_heads``); only their soft tokens and the answer run here.
        """
        prefix_len = prefix[0][0].shape[2] if prefix else 0
        need_more = self.max_form_len > 1
        if heads is None and self.late_split(batch, prefix) is not None:
            heads = self.row_heads(batch, prefix)
        if heads is None and torch.is_grad_enabled() and len(batch) > 1:
            parts = token_budget_parts(batch, ROW_TOKEN_BUDGET)
            if len(parts) > 1:  # long rows: each part's activations are recomputed in backward, not held
                scores = [
                    torch.utils.checkpoint.checkpoint(self.label_scores, part, prefix, use_reentrant=False)
                    for part in parts
                ]
                return torch.cat(scores)
        if heads is None and self._inline_chunk() is not None:
            return self._label_scores_inline(batch, prefix, prefix_len)
        if heads is None:
            ids, attention, positions = self._pad_left(batch, prefix_len)
            input_ids, embeds = self.row_inputs(ids)
            if not need_more and shared_prefix.holds_once(self.backbone, prefix, batch):  # one copy of the prefix
                out = shared_prefix.run_over(self.backbone, input_ids, attention, positions, prefix, embeds)
            else:
                out = self.backbone.run(
                    input_ids, attention, positions, prefix, inputs_embeds=embeds, return_cache=need_more
                )
        else:
            out, attention, positions = self._run_tails(heads, need_more)
        hidden, cache = out if need_more else (out, None)
        form_scores, rows_w = self.first_tokens(hidden)
        if need_more:
            form_scores = form_scores + self._continuations(cache, attention, positions, rows_w)
        return self._forms_to_labels(form_scores)

    def copied_prefix(self, prefix: KV, rows: list[list[int]]) -> int:
        """Prefix positions each row's keys/values hold when ``rows`` are scored: 0 where they attend one copy."""
        one_pass = self.max_form_len == 1 or self._inline_chunk() is not None
        held = one_pass and shared_prefix.holds_once(self.backbone, prefix, rows)
        return 0 if held else prefix_length(prefix)

    def first_tokens(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """((b, F) log-probability of each label form's first token after the rows' last position, the LM head's
        rows of the candidate tokens (C, d))."""
        rows_w = self.backbone.lm_rows(self.candidates)
        first = F.log_softmax(hidden[:, -1].float() @ rows_w.float().T, dim=-1)  # (b, C)
        return first[:, self.form_first], rows_w

    def _inline_chunk(self) -> ContinuationChunk | None:
        """The one chunk of label-word continuations short enough to run in the rows' own pass, if there is."""
        one = len(self._cont_chunks) == 1 and self._cont_chunks[0].ids.shape[1] <= INLINE_TOKENS
        return self._cont_chunks[0] if one else None

    def _label_scores_inline(self, batch: list[list[int]], prefix: KV, prefix_len: int) -> Tensor:
        """``label_scores`` in one pass: each row's label-word tokens run after it (``label_forms.inline_mask``),
        where the row then its words' continuation took two passes (one weight-bound pass fewer a batch)."""
        ids, attention, positions = self._pad_left(batch, prefix_len)
        held = shared_prefix.holds_once(self.backbone, prefix, batch)  # the rows and their words packed
        scores = self.inline_form_scores(ids, attention, positions, prefix, [self._inline_chunk()], [len(batch)], held)
        return self._forms_to_labels(scores)

    def inline_form_scores(self, ids, attention, positions, past: KV, chunks, counts: list[int], held=False) -> Tensor:
        """(b, F) each label form's log-likelihood after each row, from one pass: rows ``ids`` (left-padded, over
        ``past``, ``held`` once), each group of ``counts`` rows with its chunk of label-word tokens after it."""
        w = ids.shape[1]
        input_ids, embeds = self.row_inputs(ids)
        if all(c is None for c in chunks):
            hidden = self.backbone.run(input_ids, attention, positions, past, inputs_embeds=embeds)
            return self.first_tokens(hidden)[0]
        dtype = past[0][0].dtype if past else self.backbone.embedding_matrix.dtype
        layout = inline_layout(chunks, counts)
        input_ids, embeds, mask, pos = with_label_tokens(
            input_ids, embeds, attention, positions, layout, self.backbone.embed, dtype, held
        )
        if held:
            hidden = shared_prefix.run_over(self.backbone, input_ids, mask, pos, past, embeds, trees=layout[2])
        else:
            hidden = self.backbone.run(input_ids, mask, pos, past, inputs_embeds=embeds)
        first, rows_w = self.first_tokens(hidden[:, :w])  # (b, F)
        parts, start = [], 0
        for chunk, k in zip(chunks, counts, strict=True):
            rows = slice(start, start + k)
            parts.append(first[rows] if chunk is None else first[rows] + chunk_scores(hidden[rows, w:], chunk, rows_w))
            start += k
        return torch.cat(parts)

    def late_split(self, batch: list[list[int]], prefix: KV) -> list[int] | None:
        """Where each row's first soft token is, when the text before it can run without gradients.

        Training only: the prefix carries no gradient (no soft token before the input) and the rows end in
        soft tokens ("late" prompts, as the built-in templates place them). The text before them then runs
        once under no_grad and only the soft tokens and the answer keep activations for the backward pass:
        memory and time of a step follow the soft tokens, not the rows' length. None: one pass.
        """
        if not torch.is_grad_enabled() or any(t.requires_grad for kv in prefix for t in kv):
            return None
        split = [next((i for i, t in enumerate(x) if t < 0), len(x)) for x in batch]
        if all(s == len(x) for s, x in zip(split, batch, strict=True)) or not any(split):
            return None
        return split

    @torch.no_grad()
    def row_heads(self, batch: list[list[int]], prefix: KV) -> RowHeads:
        """Run the rows' text before their first soft token (no gradients): the keys/values the rest continues."""
        prefix_len = prefix[0][0].shape[2] if prefix else 0
        split = [next((i for i, t in enumerate(x) if t < 0), len(x)) for x in batch]
        ids, att, pos = self._pad_left([x[:s] for x, s in zip(batch, split, strict=True)], prefix_len)
        _, cache = self.backbone.run(ids, att, pos, prefix, return_cache=True)
        tails = [x[s:] for x, s in zip(batch, split, strict=True)]
        return RowHeads(cache, att, pos, tails, prefix_len)

    def _run_tails(self, heads: RowHeads, need_more: bool):
        """The rows' soft tokens and what follows them, over the keys/values of their text."""
        ids_t, attention, pos_t = self.tail_inputs(heads)
        input_ids, embeds = self.row_inputs(ids_t)
        out = self.backbone.run(input_ids, attention, pos_t, heads.cache, inputs_embeds=embeds, return_cache=need_more)
        return out, attention, pos_t

    def tail_inputs(self, heads: RowHeads) -> tuple[Tensor, Tensor, Tensor]:
        """The rows' tails (soft tokens and after) left-padded: (ids, attention over the heads' keys and the
        tails, positions), to run over ``heads.cache``."""
        att_h, pos_h = heads.attention, heads.positions
        ids_t, mask_t, _ = self._pad_left(heads.tails, 0)  # no prefix: the mask is the tails' own
        pos_t = (pos_h[:, -1:] + (att_h[:, -1:] > 0).long() + mask_t.cumsum(1) - 1).clamp(min=heads.prefix_len)
        return ids_t, torch.cat([att_h, mask_t], dim=1), pos_t

    def _continuations(self, cache: KV, attention: Tensor, positions: Tensor, rows_w: Tensor) -> Tensor:
        """Log-likelihood of the 2nd.. tokens of every multi-token label word, from the rows' cache.

        All forms continue one shared copy of each row's cache: their tokens run as one sequence per row
        whose attention mask lets each token see the row and the earlier tokens of its own form only (a
        tree). Forms are taken in chunks of at most ``CONTINUATION_CHUNK`` tokens, so what a batch holds
        grows with its rows, not with rows x label forms.
        """
        b, dev = attention.shape[0], self.backbone.device
        out = torch.zeros(b, len(self.form_tokens), device=dev)
        dtype = cache[0][0].dtype
        row_mask = torch.zeros(b, 1, 1, attention.shape[1], dtype=dtype, device=dev)
        row_mask.masked_fill_(attention.to(dev)[:, None, None, :] == 0, torch.finfo(dtype).min)
        last = positions.to(dev)[:, -1:]

        def run(chunk: ContinuationChunk, cache: KV, rows_w: Tensor) -> Tensor:
            n = chunk.ids.shape[1]
            tree = torch.zeros(n, n, dtype=dtype, device=dev).masked_fill_(~chunk.visible, torch.finfo(dtype).min)
            mask = torch.cat([row_mask.expand(b, 1, n, -1), tree.expand(b, 1, n, n)], dim=-1)
            hidden = self.backbone.run(chunk.ids.expand(b, n), mask, last + 1 + chunk.depth, cache)  # (b, n, d)
            return chunk_scores(hidden, chunk, rows_w)  # (b, F): summed per form

        # Training with several chunks: each chunk's activations are recomputed in the backward pass rather than
        # held, so a step holds one chunk's at a time.
        recompute = torch.is_grad_enabled() and len(self._cont_chunks) > 1
        for chunk in self._cont_chunks:
            if recompute:
                out = out + torch.utils.checkpoint.checkpoint(run, chunk, cache, rows_w, use_reentrant=False)
            else:
                out = out + run(chunk, cache, rows_w)
        return out

    def _forms_to_labels(self, form_scores: Tensor) -> Tensor:
        n = len(self.verbalizer.labels)
        out = torch.full((form_scores.shape[0], n), float("-inf"), device=form_scores.device)
        for li in range(n):
            cols = (self.form_label == li).nonzero()[:, 0]
            out[:, li] = torch.logsumexp(form_scores[:, cols], dim=1) - torch.log(torch.tensor(float(len(cols))))
        return out

    # --- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def score(
        self,
        encoded: Encoded,
        batch_size: int = 32,
        calibrate: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> Tensor:
        """(n, n_labels) label log-probabilities (normalized over labels), batched by length."""
        prefix = self.cached_prefix()
        order = sorted(range(len(encoded.ids)), key=lambda i: len(encoded.ids[i]))
        out = torch.empty(len(order), len(self.verbalizer.labels), device=self.backbone.device)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            # long rows or a long prefix: parts of bounded padded tokens and keys/values (they bound the memory)
            rows = [encoded.ids[i] for i in batch]
            for part in token_budget_parts(rows, SCORE_TOKEN_BUDGET, self.copied_prefix(prefix, rows), KV_TOKEN_BUDGET):
                idx, batch = batch[: len(part)], batch[len(part) :]
                out[idx] = self.label_scores(part, prefix)
                if progress:
                    progress(len(idx))
        out = F.log_softmax(out, dim=-1)
        if calibrate and self.verbalizer.calibration is not None:
            out = F.log_softmax(out - torch.tensor(self.verbalizer.calibration, device=out.device), dim=-1)
        return out.cpu()

    def calibrate(self) -> list[float]:
        """Fit contextual calibration on content-free inputs; stores and returns log p(label | N/A)."""
        fields = {v: "" for v in self.template.variables}
        rows = [Row({k: cf for k in fields}, source="content-free input") for cf in CONTENT_FREE]
        probs = self.score(self.encode(rows), calibrate=False).exp().mean(0)
        self.verbalizer.calibration = probs.clamp_min(1e-12).log().tolist()
        return self.verbalizer.calibration

    @torch.no_grad()
    def generate(self, fields: dict, config: GenerationConfig | None = None) -> str:
        """Free text after the prompt and a row's fields, over the cached prefix (see ``core.generate``)."""
        row = self.row_ids(self.compiled.render_row(fields))
        return Generator(self.backbone).generate(row, prefix=self.cached_prefix(), embed=self.row_inputs, config=config)


__all__ = ["Encoded", "PromptModel", "RowHeads"]  # the loss: verbalizer_objective.VerbalizerObjective
