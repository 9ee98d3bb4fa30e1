"""GenerationTask: a soft prompt (prompt tuning, P-tuning, prefix tuning, P-tuning v2) trained to write text.

import prompttune
task = prompttune.GenerationTask.for_data(prompttune.Backbone.load(), rows, method="prefix-tuning")
task.fit(rows)                              # LM loss on the target tokens, validated by ROUGE-L
task.evaluate("test.jsonl")["bleu"]         # BLEU / ROUGE-L / EM / F1 against every reference of an input
task.predict(["name[Alimentum], area[city centre]"])
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import torch

from prompttune.batches import activation_tokens
from prompttune.core.backbone import Backbone
from prompttune.core.beam import beam_search
from prompttune.core.data import Dataset, Row
from prompttune.core.errors import ArtifactError, DataError, ModelError
from prompttune.core.generate import MAX_NEW_TOKENS, GenerationConfig, Generator
from prompttune.core.template import Template
from prompttune.generation.decode import greedy_batch
from prompttune.generation.metrics import generation_report, rouge_l
from prompttune.generation.model import TARGET_FIELDS, GenerationModel, references
from prompttune.methods import build_method
from prompttune.task import Data, Task, as_dataset
from prompttune.train import TrainConfig

DEFAULT_TEMPLATE = {"user": "[soft]{{ input }}"}  # a chat turn; the answer (the target) is the assistant's
DECODE_BATCH = 16  # rows decoded together (greedy)
VALIDATION_INPUTS = 64  # distinct inputs generated for at each validation, at most (a seeded sample)


def is_generation_data(rows: Dataset) -> bool:
    """Rows with a ``target`` (or ``targets``) field and no ``label``: text to write, not a class."""
    first = rows.rows[0].fields if rows.rows else {}
    return any(f in first for f in TARGET_FIELDS) and "label" not in first


def default_template(rows: Dataset) -> dict:
    first = rows.rows[0].fields
    for name in ("input", "text"):
        if name in first:
            return {"user": f"[soft]{{{{ {name} }}}}"}
    raise DataError(
        f"{rows.rows[0].where()}: no 'input' (or 'text') field to prompt with; found "
        f"{', '.join(sorted(first))}. Rename the field, or pass --template naming your fields "
        "(e.g. '[soft] Table: {{ table }} Text: [label]')."
    )


def group_by_input(rows: list[Row], names: list[str]) -> list[tuple[Row, list[str]]]:
    """Rows with the same input fields grouped: (first row, every reference of that input), in first-seen order."""
    groups: dict[tuple, tuple[Row, list[str]]] = {}
    for row in rows:
        key = tuple(str(row.fields.get(n)) for n in names)
        groups.setdefault(key, (row, []))[1].extend(references(row))
    return list(groups.values())


def split_by_input(rows: Dataset, fraction: float, seed: int, fields: tuple[str, ...] = ("input",)) -> tuple:
    """A seeded (rest, held-out) split that keeps all rows of an input on one side (no input in both)."""
    names = [f for f in fields if rows.rows and f in rows.rows[0].fields] or sorted(
        k for k in rows.rows[0].fields if k not in TARGET_FIELDS
    )
    keys = list(dict.fromkeys(tuple(str(r.fields.get(n)) for n in names) for r in rows.rows))
    if len(keys) < 4:
        raise DataError(
            f"{rows.source}: {len(keys)} distinct inputs is too few to carve a validation split; pass --val."
        )
    random.Random(seed).shuffle(keys)
    held = set(keys[: max(1, round(len(keys) * fraction))])
    pick = [tuple(str(r.fields.get(n)) for n in names) in held for r in rows.rows]
    return (
        Dataset([r for r, h in zip(rows.rows, pick, strict=True) if not h], rows.source),
        Dataset([r for r, h in zip(rows.rows, pick, strict=True) if h], rows.source),
    )


def apply_decoding(task, changes: dict | None) -> None:
    """Decoding settings for this use of a task (``{"num_beams": 4}``: --num-beams); an error for any task that
    does not write text. Each setting checks itself (``GenerationConfig``)."""
    if not changes:
        return
    if not isinstance(task, GenerationTask):
        flags = " / ".join("--" + k.replace("_", "-") for k in changes)
        raise DataError(
            f"{flags}: for generation artifacts (trained on rows with a target); this one does not write text."
        )
    task.decoding = task.decoding.replace(**changes)


class GenerationObjective:
    """The Trainer's view: LM loss on target tokens over the prefix, ROUGE-L of greedy outputs on validation."""

    metric = "rougeL"
    # The Trainer takes a step in parts of at most this many padded tokens (prompt + target), the prefix computed
    # once for all of them (``PrefixModel.prefix_once``): E2E at batch 16 (rows up to ~110 tokens) then peaks at
    # one part's activations, not the batch's. The figure is for 16-bit activations: a float32 backbone's take
    # twice the bytes a token, so its parts hold half the tokens (``activation_tokens``)
    micro_batch_tokens = 1024

    def __init__(self, task: GenerationTask, train: Dataset, val: Dataset, seed: int = 0):
        self.task, self.model = task, task.model
        self.trainable = self.model.method
        self.examples = self.model.encode(train.rows, targets=True)  # every data error before the first step
        self.model.encode(val.rows, targets=True)
        groups = group_by_input(val.rows, sorted(self.model.template.variables))
        if len(groups) > VALIDATION_INPUTS:
            groups = random.Random(seed).sample(groups, VALIDATION_INPUTS)
        self.val = groups
        self.val_rows = len(groups)  # ROUGE-L is a mean over these inputs (kept_states.standard_error)
        self.lengths = [len(x.ids) + len(x.target) for x in self.examples]
        self.micro_batch_tokens = activation_tokens(GenerationObjective.micro_batch_tokens, self.model.backbone)

    def loss_weight(self, batch: list[int]) -> int:
        """The loss is a mean over target tokens: ranks and micro-batches combine by their token counts."""
        return sum(len(self.examples[i].target) for i in batch)

    def batch_loss(self, batch: list[int]) -> torch.Tensor:
        return self.model.target_loss([self.examples[i] for i in batch], self.model.prefix_kv())

    def validate(self) -> float:
        outputs = self.task.write([row for row, _ in self.val])
        return generation_report(outputs, [refs for _, refs in self.val])["rougeL"]

    @torch.no_grad()
    def validate_shard(self, rank: int, world: int, reduce) -> float:
        """``validate`` in a data-parallel run: this rank writes every ``world``-th validation input; ROUGE-L is a
        mean over inputs, so its sums and counts add up over the ranks (``reduce``)."""
        mine = self.val[rank::world]
        counts = torch.zeros(2, dtype=torch.float64)
        if mine:
            outputs = self.task.write([row for row, _ in mine])
            counts[0], counts[1] = rouge_l(outputs, [refs for _, refs in mine]) * len(mine), len(mine)
        total, n = reduce(counts).tolist()
        return total / n if n else 0.0

    def clear_cache(self) -> None:
        self.model.clear_cache()


class GenerationTask(Task):
    """A prompt (hard, or hard + soft) on a frozen decoder that writes the target text for an input."""

    default_method = "prefix-tuning"
    model: GenerationModel

    def __init__(self, model, method_name, method_config, manifest=None, decoding: dict | None = None):
        super().__init__(model, method_name, method_config, manifest)
        self.decoding = GenerationConfig(**(decoding or {}))
        self.longest_target: int | None = None  # tokens (with the end token) of the longest training target

    @classmethod
    def create(
        cls,
        backbone: Backbone,
        method: str = "prefix-tuning",
        method_config: dict | None = None,
        template: str | dict | Template | None = None,
        decoding: dict | None = None,
        seed: int = 0,
    ) -> GenerationTask:
        method_config = dict(method_config or {})
        tmpl = Template.from_spec(template or DEFAULT_TEMPLATE)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)

        def factory(slots, ctx):
            return build_method(method, method_config, backbone, slots, ctx)

        n_virtual = int(method_config.get("num_virtual_tokens", 16))
        model = GenerationModel(backbone, tmpl, factory, n_virtual, generator=gen)
        return cls(model, method, model.method.config.to_dict(), decoding=decoding)

    @classmethod
    def for_data(
        cls,
        backbone: Backbone,
        train: Dataset,
        method: str | None = None,
        method_config: dict | None = None,
        seed: int = 0,
        template: str | dict | Template | None = None,
    ) -> GenerationTask:
        """A task for these rows: their fields' template (or ``template``); decoding bounded by the targets' length."""
        tmpl = Template.from_spec(template if template is not None else default_template(train))
        task = cls.create(backbone, method or cls.default_method, method_config, tmpl, seed=seed)
        task.bound_decoding(train)
        return task

    def bound_decoding(self, train: Dataset) -> None:
        """``max_new_tokens`` from the longest target of these rows (1.5x + 8), kept as ``longest_target``."""
        self.longest_target = max(
            (len(self.model.target_ids(t)) for r in train.rows for t in references(r)), default=32
        )
        n = self.longest_target
        self.decoding = self.decoding.replace(max_new_tokens=min(MAX_NEW_TOKENS, n + n // 2 + 8))

    @property
    def metric(self) -> str:
        return "rougeL"

    @property
    def labels(self) -> list[str]:
        return []

    # --- training -----------------------------------------------------------------------------
    def objective(self, train: Dataset, val: Dataset, config: TrainConfig) -> GenerationObjective:
        if config.backbone_dropout:
            raise ModelError("--backbone-dropout: applies to head tasks (--head); generation has no such step.")
        return GenerationObjective(self, train, val, config.seed)

    # --- use ----------------------------------------------------------------------------------
    def write(self, rows: list[Row], config: GenerationConfig | None = None) -> list[str]:
        """The generated text for each row (its prompt fields; targets are not read)."""
        config = config or self.decoding
        examples = self.model.encode(rows, targets=False)
        prefix = self.model.cached_prefix()
        if config.temperature > 0 or config.finish_sentence or config.grammar is not None:  # row by row (the verb)
            gen = Generator(self.backbone)
            return [self.model.generate(x.ids, config, gen).strip() for x in examples]
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))  # similar lengths share a batch
        texts = [""] * len(examples)
        if config.num_beams == 1:  # continuous batching: DECODE_BATCH rows write at once, new ones take free slots
            ids = [examples[i].ids for i in order]
            out = greedy_batch(self.backbone, ids, prefix or None, self.model.row_inputs, config, slots=DECODE_BATCH)
            for i, t in zip(order, out, strict=True):
                texts[i] = t.strip()
            return texts
        for start in range(0, len(order), DECODE_BATCH):
            idx = order[start : start + DECODE_BATCH]
            ids = [examples[i].ids for i in idx]
            batch = beam_search(self.backbone, ids, prefix or None, self.model.row_inputs, config)
            for i, t in zip(idx, batch, strict=True):
                texts[i] = t.strip()
        return texts

    def predict(self, inputs: Data, batch_size: int = 32, config: GenerationConfig | None = None) -> list[str]:
        ds = self._inputs(inputs)
        return self.write(ds.rows, config)

    def predictions(self, inputs: Data) -> list[dict]:
        ds = self._inputs(inputs)
        names = sorted(self.model.template.variables)
        shown = [shown_input(r, names) for r in ds.rows]
        return [{"input": s, "answer": t} for s, t in zip(shown, self.write(ds.rows), strict=True)]

    def generate(self, text: str | dict, config: GenerationConfig | None = None) -> str:
        """Free text for one input (a string for a one-field template, or a dict of its fields)."""
        return self.predict([text], config=config)[0]

    def _inputs(self, inputs: Data) -> Dataset:
        """Rows; a bare string fills the template's one field (``text`` or ``input``)."""
        ds = as_dataset(inputs)
        names = sorted(self.model.template.variables)
        if len(names) == 1 and names[0] != "text":
            for r in ds.rows:
                if names[0] not in r.fields and set(r.fields) <= {"text"}:
                    r.fields = {names[0]: r.fields.get("text", "")}
        return ds

    def evaluate(
        self, data: Data, batch_size: int = 32, calibrate=None, progress: Callable[[int], None] | None = None
    ) -> dict:
        """BLEU, ROUGE-L, exact match and token F1 against every reference of an input (rows with the same
        input are one input; a ``targets`` list gives several at once), with examples/s and tokens/s."""
        ds = self._inputs(data)
        names = sorted(self.model.template.variables)
        groups = group_by_input(ds.rows, names)
        for row, refs in groups:
            if not refs:
                raise DataError(f"{row.where()}: missing field 'target' (the reference text to score against).")
        self.model.cached_prefix()  # computed once, not counted as per-example time
        t0 = time.perf_counter()
        outputs = self.write([row for row, _ in groups])
        if progress:
            progress(len(groups))
        seconds = time.perf_counter() - t0
        tokens = sum(len(self.backbone.tokenize(o)) for o in outputs)
        report = generation_report(outputs, [refs for _, refs in groups])
        report |= {
            "examples_per_s": len(groups) / seconds if seconds else 0.0,
            "tokens_per_s": tokens / seconds if seconds else 0.0,
            "eval_seconds": seconds,
            "samples": [
                {"input": shown_input(r, names), "where": r.where(), "output": o, "reference": refs[0]}
                for (r, refs), o in zip(groups[:3], outputs[:3], strict=True)
            ],
        }
        return report

    # --- save / load --------------------------------------------------------------------------
    def manifest_fields(self) -> dict:
        d = self.decoding
        decoding = {"max_new_tokens": d.max_new_tokens, "temperature": d.temperature, "top_p": d.top_p}
        decoding |= {"repetition_penalty": d.repetition_penalty, "no_repeat_ngram_size": d.no_repeat_ngram_size}
        return {"template": self.model.template.to_dict(), "generation": {"decoding": decoding}}

    @classmethod
    def reads(cls, manifest: dict) -> bool:
        return bool(manifest.get("generation"))

    @classmethod
    def from_artifact(cls, path: Path, manifest: dict, weights: dict, backbone: Backbone) -> GenerationTask:
        task = cls.create(
            backbone,
            manifest["method"],
            manifest["method_config"],
            Template.from_spec(manifest["template"]),
            decoding=manifest["generation"].get("decoding"),
        )
        try:
            task.model.method.load_trainable_state(weights)
        except RuntimeError as e:
            raise ArtifactError(f"{path}: weights do not fit the method ({e}).") from None
        task.model.method.eval()
        task.manifest = manifest
        return task


def shown_input(row: Row, names: list[str]) -> str:
    """A row's prompt fields as one line, for people to read (``predictions``, a report's samples)."""
    return " | ".join(str(row.fields[v]) for v in names if v in row.fields)
