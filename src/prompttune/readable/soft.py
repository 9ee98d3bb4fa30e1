"""A task's soft prompt as input embeddings per template slot, and the same task with those slots holding
other embeddings (a projection onto tokens) or written out as hard text.

A soft prompt is readable here when its method puts input embeddings at the template's soft slots (prompt
tuning; P-tuning, whose encoder's output is such a table). Methods whose prompt is per-layer keys/values
(prefix tuning, P-tuning v2) give their slots no width: there are no tokens to compare with the vocabulary.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from prompttune.core.backbone import Backbone
from prompttune.core.data import Dataset
from prompttune.core.errors import ArtifactError, TemplateError
from prompttune.core.template import SOFT_RE, Template
from prompttune.core.verbalizer import Verbalizer
from prompttune.prompt_task import PromptTask
from prompttune.task import load

# The method that holds a fixed table of input embeddings at the slots: what a projection is scored with.
TABLE_METHOD = "prompt-tuning"


def load_prompt_task(path: str | Path, backbone: Backbone | str | None, dtype=None, device=None) -> PromptTask:
    """An artifact read out by label words (inspect's and harden's input); anything else is an error."""
    task = load(path, backbone, dtype=dtype, device=device)
    if not isinstance(task, PromptTask):
        raise ArtifactError(
            f"{path}: a {type(task).__name__} (a head or generation artifact); inspect and harden read prompts "
            "scored by label words (prompttune train without --head / --task generate)."
        )
    return task


def soft_tables(task: PromptTask, where: str) -> dict[int, Tensor]:
    """{slot index: (size, d) float32 input embeddings} for every soft slot that holds tokens."""
    method = task.model.method
    with torch.no_grad():
        tables = {s.index: method.slot_embeddings(s).detach().float().cpu() for s in method.slots}
    tables = {i: t for i, t in tables.items() if t.shape[0]}
    if not tables:
        raise ArtifactError(
            f"{where}: method {task.method_name} puts no input embeddings at the template's soft slots (a "
            "hard prompt, or per-layer keys/values as prefix tuning and p-tuning-v2 train), so there are no soft "
            "tokens to read. inspect and harden read prompt-tuning and p-tuning artifacts."
        )
    return tables


def plain_verbalizer(verbalizer: Verbalizer) -> Verbalizer:
    """The same label words without calibration (a calibration belongs to the prompt it was fitted on)."""
    return Verbalizer(list(verbalizer.labels), {k: list(v) for k, v in verbalizer.words.items()})


def with_tables(task: PromptTask, tables: dict[int, Tensor]) -> PromptTask:
    """The task's template and label words with its soft slots holding ``tables`` ({slot index: (size, d)})."""
    m = task.model
    verb = plain_verbalizer(m.verbalizer)
    config = {"num_virtual_tokens": m.compiled.num_virtual_tokens}
    new = PromptTask.create(m.backbone, verb.labels, TABLE_METHOD, config, m.template, verbalizer=verb)
    new.model.method.load_table(torch.cat([tables[s.index] for s in new.model.method.slots]))
    new.model.clear_cache()
    return new


def hard_task(backbone: Backbone, template: Template, verbalizer: Verbalizer) -> PromptTask:
    """A template scored as a hard prompt (soft slots left out), with these label words and no calibration."""
    verb = plain_verbalizer(verbalizer)
    return PromptTask.create(backbone, verb.labels, "zero-shot", {}, template.hard(), verbalizer=verb)


def accuracy(task: PromptTask, rows: Dataset | None, calibrate: bool = False) -> float | None:
    return None if rows is None else float(task.evaluate(rows, calibrate=calibrate)["accuracy"])


def literal(text: str) -> str:
    """Text that renders as itself in a template: Jinja syntax kept raw; a slot or label marker refused."""
    if SOFT_RE.search(text) or "[label]" in text or "[soft" in text:
        raise TemplateError(f"the tokens' text {text!r} reads as a template marker; use --vocab readable.")
    if "{" in text:
        return "{% raw %}" + text.replace("{% endraw %}", "") + "{% endraw %}"
    return text


def with_text(template: Template, texts: dict[int, str], description: str = "") -> Template:
    """The template with soft slot k (numbered as the compiler numbers them: system, messages, user, answer)
    replaced by ``texts[k]``; a slot without text (one that held no tokens) is dropped."""
    counter = itertools.count()

    def sub(source: str | None) -> str | None:
        if source is None:
            return None
        return SOFT_RE.sub(lambda m: literal(texts.get(next(counter), "")), source)

    return replace(
        template,
        system=sub(template.system),
        messages=tuple((r, sub(c)) for r, c in template.messages),
        user=sub(template.user),
        answer=sub(template.answer),
        description=description or template.description,
    )


def slot_texts(backbone: Backbone, ids: dict[int, list[int]]) -> tuple[dict[int, str], bool]:
    """({slot: the tokens' text}, whether every slot's text tokenizes back to exactly its tokens)."""
    texts = {i: backbone.tokenizer.decode(t) for i, t in ids.items()}
    return texts, all(backbone.tokenize(texts[i]) == list(t) for i, t in ids.items())
