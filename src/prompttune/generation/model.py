"""GenerationModel: a frozen decoder, a template, a soft-prompt method, trained to write the target text.

The template's constant prefix (chat header, system text, soft tokens) is the method's prefix, computed once
per training step at batch size 1 (``prefix_kv``) and once per artifact at inference (``cached_prefix``). A row
is the template rendered up to where the answer starts (the text after the last field); the target follows
it, tokenized on its own (as generation continues the row's tokens) and closed by the end token the model
writes after an answer (the chat template's end of turn, else eos). The loss is the language-modelling loss
of the target tokens only: prompt tokens and padding are never predicted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prompttune.core.backbone import KV, Backbone
from prompttune.core.data import Row
from prompttune.core.errors import DataError, ModelError
from prompttune.core.generate import GenerationConfig, Generator
from prompttune.core.template import CompiledTemplate, SoftSlot, Template
from prompttune.generation import lm_loss
from prompttune.methods import SoftPromptMethod
from prompttune.prefix import PrefixModel

MAX_VIRTUAL_TOKENS = 256  # soft tokens in a template at most (attention over them grows with their square)
TARGET_FIELDS = ("target", "targets")


@dataclass
class Example:
    """A row's prompt tokens (after the constant prefix; soft tokens as negative codes) and its target's."""

    ids: list[int]
    target: list[int]  # ends with the end token; [] for rows given without a target


def references(row: Row) -> list[str]:
    """The row's reference texts: ``targets`` (a list) and/or ``target`` (a text)."""
    refs = row.fields.get("targets")
    out: list[str] = []
    if refs is not None:
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise DataError(f"{row.where()}: field 'targets' must be a list of texts.")
        out += refs
    if row.fields.get("target") is not None:
        out.insert(0, str(row.fields["target"]))
    return out


class GenerationModel(PrefixModel):
    def __init__(
        self,
        backbone: Backbone,
        template: Template,
        method_factory: Callable[[list[SoftSlot], dict], SoftPromptMethod],
        num_virtual_tokens: int,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if backbone.kind != "decoder":
            raise ModelError(f"--model {backbone.model_id}: an encoder cannot write text; use a decoder.")
        self.backbone, self.template = backbone, template
        for name in TARGET_FIELDS:
            if name in template.used_variables:
                raise DataError(f"template: uses {{{{ {name} }}}}, the text to write; the prompt must not show it.")
        self.compiled: CompiledTemplate = template.compile(backbone.tokenizer, [], num_virtual_tokens)
        slots = [s for s in self.compiled.prefix if isinstance(s, SoftSlot)] + self.compiled.row_slots
        n_soft = sum(s.size for s in slots)
        if n_soft > MAX_VIRTUAL_TOKENS:
            raise ModelError(
                f"--num-virtual-tokens {num_virtual_tokens}: the template then has {n_soft} soft tokens, more than "
                f"the limit of {MAX_VIRTUAL_TOKENS}; use fewer virtual tokens or smaller [soft:N] slots."
            )
        self.method = method_factory(slots, {"generator": generator, "label_words": []})
        self.method.to(backbone.device)
        self.index_row_soft_tokens()
        self.segments = self.tokenize_prefix()
        self.end_id = end_of_answer(backbone, template.chat)

    @property
    def trainable(self) -> SoftPromptMethod:
        return self.method

    # --- encoding -----------------------------------------------------------------------------
    @property
    def prefix_length(self) -> int:
        if not self.segments:
            return 0
        kv = self.cached_prefix()
        return kv[0][0].shape[2] if kv else 0

    def target_ids(self, text: str) -> list[int]:
        return self.backbone.tokenize(self.compiled.label_text(text)) + [self.end_id]

    def encode(self, rows: Sequence[Row], targets: bool) -> list[Example]:
        """Rows as examples (one per reference when ``targets``), checked to fit the context; errors name the row."""
        room = self.backbone.max_length - self.prefix_length
        out = []
        for row in rows:
            missing = [v for v in sorted(self.template.variables) if v not in row.fields]
            if missing:
                raise DataError(f"{row.where()}: missing field {missing[0]!r} (the template uses it).")
            ids = self.row_ids(self.compiled.render_row(row.fields))
            if not ids:
                raise DataError(f"{row.where()}: the prompt's row part has no tokens; give the field some text.")
            refs = references(row) if targets else []
            if targets and not refs:
                raise DataError(f"{row.where()}: missing field 'target' (the text the prompt should write).")
            for ref in refs:
                if not ref.strip():
                    raise DataError(f"{row.where()}: empty target; give every row the text to write, or remove it.")
            encoded = [self.target_ids(r) for r in refs] or [[]]
            longest = max(len(t) for t in encoded)
            if len(ids) + longest + (0 if targets else 1) > room:
                raise DataError(
                    f"{row.where()}: prompt ({len(ids)} tokens) and target ({longest} tokens) after the "
                    f"{self.prefix_length}-token prefix exceed the model's context ({self.backbone.max_length}); "
                    "shorten the text or the target, or use fewer virtual tokens."
                )
            out += [Example(ids, t) for t in encoded]
        return out

    # --- the loss -----------------------------------------------------------------------------
    def target_loss(self, batch: list[Example], prefix: KV) -> Tensor:
        """Mean cross-entropy of the target tokens (prompt tokens masked), rows right-padded after the prefix."""
        p = prefix[0][0].shape[2] if prefix else 0
        seqs = [x.ids + x.target for x in batch]
        b, width = len(seqs), max(len(s) for s in seqs)
        ids = torch.full((b, width), self.backbone.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros(b, width, dtype=torch.long)
        rows, cols, labels = [], [], []
        for i, (x, s) in enumerate(zip(batch, seqs, strict=True)):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
            n = len(x.ids)
            rows += [i] * len(x.target)
            cols += range(n - 1, n - 1 + len(x.target))  # position t predicts token t + 1
            labels += x.target
        positions = (p + torch.arange(width))[None].expand(b, -1)
        attention = torch.cat([torch.ones(b, p, dtype=torch.long), mask], dim=1)
        input_ids, embeds = self.row_inputs(ids)
        hidden = self.backbone.run(input_ids, attention, positions, prefix, inputs_embeds=embeds)
        at = torch.tensor(rows, device=hidden.device), torch.tensor(cols, device=hidden.device)
        picked = hidden[at]  # (n_target_tokens, d): the rest is never read out
        return lm_loss.target_loss(picked, self.backbone.model.get_output_embeddings(), torch.tensor(labels))

    # --- writing ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, ids: list[int], config: GenerationConfig, generator: Generator | None = None) -> str:
        """Text after a row's prompt tokens, over the cached prefix (``core.generate``)."""
        gen = generator or Generator(self.backbone)
        return gen.generate(ids, prefix=self.cached_prefix() or None, embed=self.row_inputs, config=config)


def end_of_answer(backbone: Backbone, chat: bool) -> int:
    """The token that ends an answer: the chat template's end of turn when the prompt is a chat, else eos."""
    tok = backbone.tokenizer
    if chat and getattr(tok, "chat_template", None):
        marker = "\u2063reply\u2063"
        try:
            chat_text = tok.apply_chat_template(
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
            )
        except Exception:  # a template that refuses this layout: eos
            chat_text = ""
        if marker in chat_text:
            after = backbone.tokenize(chat_text[chat_text.find(marker) + len(marker) :])
            if after and after[0] in backbone.end_token_ids:
                return after[0]
    if tok.eos_token_id is None:
        raise ModelError(f"--model {backbone.model_id}: its tokenizer has no end-of-text token to end answers with.")
    return int(tok.eos_token_id)
