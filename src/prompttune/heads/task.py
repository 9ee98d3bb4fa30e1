"""HeadTask: a soft prompt and a trained read-out head (classification, tagging, QA) on a frozen backbone.

import prompttune
ner = prompttune.load("runs/conll")          # an artifact with a token head
ner.predict([{"tokens": ["Peter", "lives", "in", "Paris"]}])
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from prompttune.core.backbone import Backbone
from prompttune.core.data import Dataset
from prompttune.core.errors import ArtifactError, DataError
from prompttune.heads.base import HEAD_KINDS, HeadKind
from prompttune.heads.model import HeadModel
from prompttune.methods import build_method
from prompttune.task import Data, Task, as_dataset
from prompttune.train import TrainConfig

# importing registers the kinds
from prompttune.heads import classification, qa, tagging  # noqa: F401,E402  isort: skip


class HeadObjective:
    """The Trainer's view of a head task: batch loss over the method's prefix, the kind's metric on validation."""

    def __init__(
        self, kind: HeadKind, model: HeadModel, train: list, val: Dataset, batch_size: int = 64, dropout: bool = False
    ):
        self.kind, self.model, self.train, self.val, self.batch_size = kind, model, train, val, batch_size
        self.val_rows = len(val.rows)  # what the metric is a mean over (kept_states.standard_error)
        self.trainable = model.trainable
        self.metric = kind.metric
        self.lengths = [kind.length(e) for e in train]
        self.dropout = dropout  # the backbone's own dropout in training steps (weights stay frozen)

    def loss_weight(self, batch: list[int]) -> float:
        """What the kind's loss is a mean over (tagging: labelled words), so ranks and micro-batches combine
        exactly; rows unless the kind says otherwise."""
        weigh = getattr(self.kind, "loss_weight", None)
        return weigh([self.train[i] for i in batch]) if weigh is not None else len(batch)

    def batch_loss(self, batch: list[int]) -> torch.Tensor:
        rows = [self.train[i] for i in batch]
        if not self.dropout:
            return self.kind.loss(self.model, rows, self.model.prefix_kv())
        backbone = self.model.backbone.model
        backbone.train()
        try:
            return self.kind.loss(self.model, rows, self.model.prefix_kv())
        finally:
            backbone.eval()

    def validate(self) -> float:
        return float(self.kind.evaluate(self.model, self.val, batch_size=self.batch_size)[self.kind.metric])

    @torch.no_grad()
    def validate_shard(self, rank: int, world: int, reduce) -> float:
        """``validate`` in a data-parallel run: this rank evaluates every ``world``-th validation row and the kind's
        sums (``HeadKind.counts``) are added over the ranks by ``reduce``; equal to ``validate`` on one process."""
        part = Dataset(self.val.rows[rank::world], self.val.source)
        counts = [0.0] * self.kind.n_counts
        if part.rows:
            counts = self.kind.counts(self.model, part, batch_size=self.batch_size)
        return float(self.kind.metric_of(reduce(torch.tensor(counts, dtype=torch.float64)).tolist()))

    def clear_cache(self) -> None:
        self.model.clear_cache()


class HeadTask(Task):
    """A trained (or new) head task on a frozen backbone."""

    default_method = "p-tuning-v2"
    default_model = "minilm"  # the P-tuning v2 setting: an encoder with a head
    model: HeadModel

    def __init__(self, kind: HeadKind, model: HeadModel, method: str, method_config: dict, manifest=None):
        super().__init__(model, method, method_config, manifest)
        self.head_kind = kind

    @classmethod
    def create(
        cls,
        backbone: Backbone,
        kind: str,
        labels: list[str],
        method: str = "p-tuning-v2",
        method_config: dict | None = None,
        settings: dict | None = None,
        seed: int = 0,
    ) -> HeadTask:
        if kind not in HEAD_KINDS:
            raise DataError(f"--head {kind}: unknown; choose one of {', '.join(sorted(HEAD_KINDS))}.")
        settings = dict(settings or {})
        if kind == "classification":  # the pooled position depends on the backbone, not on the user
            settings.setdefault("pool", "first" if backbone.kind == "encoder" else "last")
        head_kind = HEAD_KINDS[kind](labels, settings)
        method_config = dict(method_config or {})
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        head = head_kind.make_head(backbone.hidden_size)

        def factory(slots, ctx):
            return build_method(method, method_config, backbone, slots, ctx)

        n_virtual = int(method_config.get("num_virtual_tokens", 16))
        model = HeadModel(backbone, head, factory, n_virtual, generator=gen)
        return cls(head_kind, model, method, model.method.config.to_dict())

    @classmethod
    def for_data(
        cls,
        backbone: Backbone,
        train: Dataset,
        kind: str,
        method: str | None = None,
        method_config: dict | None = None,
        seed: int = 0,
        max_length: int | None = None,
    ) -> HeadTask:
        """A new task of this head kind for these training rows (their labels or tags)."""
        labels = HEAD_KINDS[kind].labels_from(train)
        settings = {"max_length": max_length} if max_length else {}
        return cls.create(backbone, kind, labels, method or cls.default_method, method_config, settings, seed=seed)

    @property
    def kind(self) -> str:
        return self.head_kind.kind

    @property
    def labels(self) -> list[str]:
        return self.head_kind.labels

    @property
    def metric(self) -> str:
        return self.head_kind.metric

    # --- training -----------------------------------------------------------------------------
    def objective(self, train: Dataset, val: Dataset, config: TrainConfig) -> HeadObjective:
        examples = self.head_kind.encode(self.model, train, training=True)  # every error before training starts
        self.head_kind.encode(self.model, val, training=False)
        self.model.trainable.train()
        return HeadObjective(self.head_kind, self.model, examples, val, dropout=config.backbone_dropout)

    # --- use ----------------------------------------------------------------------------------
    def predict(self, inputs: Data, batch_size: int = 32) -> list[dict]:
        self.model.trainable.eval()
        return self.head_kind.predict(self.model, as_dataset(inputs), batch_size=batch_size)

    def predictions(self, inputs: Data) -> list[dict]:
        ds = as_dataset(inputs)
        out = []
        for row, p in zip(ds.rows, self.predict(ds), strict=True):
            shown = row.fields.get("question") or row.fields.get("text") or " ".join(row.fields.get("tokens") or [])
            out.append({"input": str(shown), **p})
        return out

    def evaluate(
        self, data: Data, batch_size: int = 32, calibrate=None, progress: Callable[[int], None] | None = None
    ) -> dict:
        """The kind's metrics (entity P/R/F1, or SQuAD EM/F1, or accuracy) and speed; ``calibrate`` is unused."""
        self.model.trainable.eval()
        ds = as_dataset(data)
        self.model.cached_prefix()
        t0 = time.perf_counter()
        report = self.head_kind.evaluate(self.model, ds, batch_size=batch_size)
        seconds = time.perf_counter() - t0
        if progress:
            progress(len(ds))
        return {**report, "examples_per_s": len(ds) / seconds if seconds else 0.0, "eval_seconds": seconds}

    # --- save / load --------------------------------------------------------------------------
    def manifest_fields(self) -> dict:
        return {"head": self.head_kind.to_dict()}

    @classmethod
    def reads(cls, manifest: dict) -> bool:
        return bool(manifest.get("head"))

    @classmethod
    def from_artifact(cls, path: Path, manifest: dict, weights: dict, backbone: Backbone) -> HeadTask:
        head = manifest["head"]
        task = cls.create(
            backbone, head["kind"], head["labels"], manifest["method"], manifest["method_config"], head["settings"]
        )
        try:
            task.model.trainable.load_trainable_state(weights)
        except (RuntimeError, KeyError) as e:
            raise ArtifactError(f"{path}: weights do not fit the method and head ({e}).") from None
        task.model.trainable.eval()
        task.manifest = manifest
        return task
