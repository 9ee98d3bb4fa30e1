"""PromptModel: a backbone, a template, a method and a verbalizer, scored the fast way.

The fast path (what PEFT does not do):
- the task's constant prefix (system text, soft tokens, instructions) is run once per training step
  at batch size 1 and its keys/values expanded over the batch; at inference it is computed once and
  cached;
- rows are left-padded after the prefix, so every row's answer position is the last one;
- only the answer positions are read out, and only through the LM head's rows of the label tokens;
- multi-token labels continue from the rows' cached keys/values (no second pass over the row).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from prompttune.core.backbone import KV, Backbone
from prompttune.core.data import Dataset, Row
from prompttune.core.errors import DataError, ModelError
from prompttune.core.generate import GenerationConfig, Generator
from prompttune.core.template import CompiledTemplate, SoftSlot, Template
from prompttune.core.verbalizer import CONTENT_FREE, Verbalizer
from prompttune.methods import SoftPromptMethod
from prompttune.prefix import PrefixModel


class VerbalizerObjective:
    """Training a PromptModel's verbalizer read-out: cross-entropy over the labels' scores, validated by accuracy.

    Rows are checked, rendered and tokenized here, once, before the first step (errors name the row).
    """

    metric = "accuracy"

    def __init__(self, model: PromptModel, train: Dataset, val: Dataset):
        self.model, self.trainable = model, model.method
        self.y_val = model.label_indices(val)  # a validation label the verbalizer does not know: an error first
        self.y_train = model.label_indices(train)
        self.train, self.val = model.encode(train), model.encode(val)
        self.lengths = [len(x) for x in self.train.ids]

    def batch_loss(self, batch: list[int]) -> Tensor:
        scores = self.model.label_scores([self.train.ids[i] for i in batch], self.model.prefix_kv())
        return F.cross_entropy(scores, self.y_train[batch])

    def validate(self) -> float:
        pred = self.model.score(self.val, batch_size=64, calibrate=False).argmax(-1)
        return float((pred == self.y_val).float().mean())

    def clear_cache(self) -> None:
        self.model.clear_cache()


@dataclass
class Encoded:
    """Token ids of each row's part (after the constant prefix)."""

    ids: list[list[int]]


class PromptModel(PrefixModel):
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
        if backbone.device.type != "cpu":
            raise ModelError(
                f"--device {backbone.device}: verbalizer read-outs (label-word scoring, generation) run on the CPU "
                "in this version; drop --device, or train a head (--head) to use the GPU."
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
        self.method = method_factory(slots, {"generator": generator, "label_words": verbalizer.display_words})
        # Row-part soft tokens are written into token ids as -(1 + k): entry k of self._row_soft.
        self._row_soft: list[tuple[SoftSlot, int]] = []
        self._row_code: dict[int, int] = {}
        for slot in self.compiled.row_slots:
            width = self.method.slot_embeddings(slot).shape[0]  # 0 for methods without soft tokens
            self._row_code[slot.index] = len(self._row_soft)
            self._row_soft += [(slot, j) for j in range(width)]
        self.segments = self._tokenize_prefix()
        self._build_label_tokens()

    # --- setup ------------------------------------------------------------------------------
    def _tokenize_prefix(self) -> list[Tensor | SoftSlot]:
        segments: list[Tensor | SoftSlot] = []
        bos = self.backbone.bos_ids
        for i, seg in enumerate(self.compiled.prefix):
            if isinstance(seg, SoftSlot):
                segments.append(seg)
            else:
                segments.append(torch.tensor((bos if i == 0 else []) + self.backbone.tokenize(seg)))
        if not segments or isinstance(segments[0], SoftSlot) and bos:
            segments.insert(0, torch.tensor(bos))
        return [s for s in segments if isinstance(s, SoftSlot) or len(s)]

    @property
    def prefix_length(self) -> int:
        hard = sum(len(s) for s in self.segments if not isinstance(s, SoftSlot))
        return hard + sum(s.size for s in self.segments if isinstance(s, SoftSlot))

    def _build_label_tokens(self) -> None:
        forms = self.verbalizer.forms()
        tokens = [self.backbone.tokenize(self.compiled.label_text(w)) for _, w in forms]
        for (li, w), t in zip(forms, tokens, strict=True):
            if not t:
                raise DataError(f"verbalizer: the word {w!r} for label {self.verbalizer.labels[li]!r} has no tokens.")
        cand = sorted({t for ts in tokens for t in ts})
        pos = {t: i for i, t in enumerate(cand)}
        self.register_buffer("candidates", torch.tensor(cand), persistent=False)
        self.form_label = torch.tensor([li for li, _ in forms])
        self.form_tokens = [[pos[t] for t in ts] for ts in tokens]  # candidate indices per form
        self.form_token_ids = tokens
        self.max_form_len = max(len(t) for t in tokens)

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
            t = self._row_ids(self.compiled.render_row(row.fields))
            if len(t) > budget:
                raise DataError(
                    f"{row.where()}: the prompt is {len(t) + self.prefix_length + self.max_form_len} tokens, "
                    f"longer than the model's context ({self.backbone.max_length}). Shorten the text or the "
                    "template, or use fewer virtual tokens."
                )
            ids.append(t)
        return Encoded(ids)

    def _row_ids(self, text: str) -> list[int]:
        """Token ids of a rendered row, soft slots written as negative codes."""
        if not self._row_soft and not self.compiled.row_slots:
            return self.backbone.tokenize(text)
        ids: list[int] = []
        for part in self.compiled.split_row(text):
            if isinstance(part, SoftSlot):
                start = self._row_code[part.index]
                width = sum(1 for s, _ in self._row_soft if s.index == part.index)
                ids += [-(1 + start + j) for j in range(width)]
            else:
                ids += self.backbone.tokenize(part)
        return ids

    def _row_inputs(self, ids: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """(input_ids, None), or (None, inputs_embeds) when rows carry soft tokens."""
        soft = ids < 0
        if not soft.any():
            return ids, None
        embeds = self.backbone.embed(ids.clamp(min=0))
        table = torch.cat([self.method.slot_embeddings(s)[j : j + 1] for s, j in self._row_soft]).to(embeds.dtype)
        embeds = torch.where(soft[..., None], table[(-ids - 1).clamp(min=0, max=len(table) - 1)], embeds)
        return None, embeds

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

    def label_scores(self, batch: list[list[int]], prefix: KV) -> Tensor:
        """(b, n_labels) log-likelihood of each label, normalized over the label tokens."""
        prefix_len = prefix[0][0].shape[2] if prefix else 0
        ids, attention, positions = self._pad_left(batch, prefix_len)
        need_more = self.max_form_len > 1
        input_ids, embeds = self._row_inputs(ids)
        out = self.backbone.run(input_ids, attention, positions, prefix, inputs_embeds=embeds, return_cache=need_more)
        hidden, cache = out if need_more else (out, None)
        rows_w = self.backbone.lm_rows(self.candidates)  # (C, d)
        first = F.log_softmax(hidden[:, -1].float() @ rows_w.float().T, dim=-1)  # (b, C)
        form_scores = torch.stack([first[:, toks[0]] for toks in self.form_tokens], dim=1)  # (b, F)
        if need_more:
            form_scores = form_scores + self._continuations(cache, attention, positions, rows_w, len(batch))
        return self._forms_to_labels(form_scores)

    def _continuations(self, cache: KV, attention: Tensor, positions: Tensor, rows_w: Tensor, b: int) -> Tensor:
        """Log-likelihood of the 2nd.. tokens of every multi-token label word, from the rows' cache."""
        n_forms, width = len(self.form_tokens), self.max_form_len - 1
        cont = torch.zeros(n_forms, width, dtype=torch.long)
        cont_mask = torch.zeros(n_forms, width, dtype=torch.long)
        for f, toks in enumerate(self.form_token_ids):
            cont[f, : len(toks) - 1] = torch.tensor(toks[:-1][:width]) if len(toks) > 1 else 0
            cont_mask[f, : len(toks) - 1] = 1
        # rows repeated per form: (b * F, ...)
        cache_rep = [(k.repeat_interleave(n_forms, 0), v.repeat_interleave(n_forms, 0)) for k, v in cache]
        ids = cont.repeat(b, 1)
        att = torch.cat([attention.repeat_interleave(n_forms, 0), cont_mask.repeat(b, 1)], dim=1)
        pos = positions[:, -1:].repeat_interleave(n_forms, 0) + 1 + torch.arange(width)
        hidden = self.backbone.run(ids, att, pos, cache_rep)  # (b*F, width, d)
        logp = F.log_softmax(hidden.float() @ rows_w.float().T, dim=-1)  # (b*F, width, C)
        target = torch.zeros(n_forms, width, dtype=torch.long)
        for f, toks in enumerate(self.form_tokens):
            target[f, : len(toks) - 1] = torch.tensor(toks[1:]) if len(toks) > 1 else 0
        picked = logp.gather(2, target.repeat(b, 1)[..., None])[..., 0] * cont_mask.repeat(b, 1)
        return picked.sum(1).view(b, n_forms)

    def _forms_to_labels(self, form_scores: Tensor) -> Tensor:
        n = len(self.verbalizer.labels)
        out = torch.full((form_scores.shape[0], n), float("-inf"))
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
        out = torch.empty(len(order), len(self.verbalizer.labels))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self.label_scores([encoded.ids[i] for i in idx], prefix)
            if progress:
                progress(len(idx))
        out = F.log_softmax(out, dim=-1)
        if calibrate and self.verbalizer.calibration is not None:
            out = F.log_softmax(out - torch.tensor(self.verbalizer.calibration), dim=-1)
        return out

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
        row = self._row_ids(self.compiled.render_row(fields))
        return Generator(self.backbone).generate(
            row, prefix=self.cached_prefix(), embed=self._row_inputs, config=config
        )
