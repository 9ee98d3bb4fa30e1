"""HeadTaskModel: a HeadModel bound to its task (classification, tagging, QA): train, save, load, use.

import prompttune
ner = prompttune.load("runs/conll")          # an artifact with a token head
ner.predict([{"tokens": ["Peter", "lives", "in", "Paris"]}])
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from prompttune.core import artifact
from prompttune.core.backbone import Backbone
from prompttune.core.data import Dataset, from_records, load_rows
from prompttune.core.errors import DataError
from prompttune.heads.base import HEAD_TASKS, HeadTask
from prompttune.heads.model import HeadModel
from prompttune.methods import build_method
from prompttune.train import TrainConfig, Trainer, TrainResult

# importing registers the tasks
from prompttune.heads import qa  # noqa: F401,E402  isort: skip
from prompttune.heads import tagging  # noqa: F401,E402  isort: skip


class HeadObjective:
    """The Trainer's view of a head task: batch loss over the method's prefix, the task's metric on validation."""

    def __init__(
        self, task: HeadTask, model: HeadModel, train: list, val: Dataset, batch_size: int = 64, dropout: bool = False
    ):
        self.task, self.model, self.train, self.val, self.batch_size = task, model, train, val, batch_size
        self.lengths = [task.length(e) for e in train]
        self.dropout = dropout  # the backbone's own dropout in training steps (weights stay frozen)

    def batch_loss(self, batch: list[int]) -> torch.Tensor:
        rows = [self.train[i] for i in batch]
        if not self.dropout:
            return self.task.loss(self.model, rows, self.model.prefix_kv())
        backbone = self.model.backbone.model
        backbone.train()
        try:
            return self.task.loss(self.model, rows, self.model.prefix_kv())
        finally:
            backbone.eval()

    def validate(self) -> float:
        return float(self.task.evaluate(self.model, self.val, batch_size=self.batch_size)[self.task.metric])


def _dataset(data) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str | Path):
        return load_rows(data)
    return from_records(data)


class HeadTaskModel:
    """A trained (or new) head task on a frozen backbone."""

    def __init__(self, task: HeadTask, model: HeadModel, method: str, method_config: dict, manifest=None):
        self.task, self.model = task, model
        self.method_name, self.method_config = method, method_config
        self.manifest = manifest or {}

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
    ) -> HeadTaskModel:
        if kind not in HEAD_TASKS:
            raise DataError(f"--head {kind}: unknown; choose one of {', '.join(sorted(HEAD_TASKS))}.")
        settings = dict(settings or {})
        if kind == "classification":  # the pooled position depends on the backbone, not on the user
            settings.setdefault("pool", "first" if backbone.kind == "encoder" else "last")
        task = HEAD_TASKS[kind](labels, settings)
        method_config = dict(method_config or {})
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        head = task.make_head(backbone.hidden_size)

        def factory(slots, ctx):
            return build_method(method, method_config, backbone, slots, ctx)

        n_virtual = int(method_config.get("num_virtual_tokens", 16))
        model = HeadModel(backbone, head, factory, n_virtual, generator=gen)
        return cls(task, model, method, model.method.config.to_dict())

    @property
    def kind(self) -> str:
        return self.task.kind

    @property
    def labels(self) -> list[str]:
        return self.task.labels

    # --- training -----------------------------------------------------------------------------
    def train(
        self,
        train: Dataset,
        val: Dataset,
        config: TrainConfig,
        checkpoint_dir: Path | None = None,
        resume: bool = False,
        on_progress: Callable[[dict], None] | None = None,
    ) -> TrainResult:
        examples = self.task.encode(self.model, train, training=True)  # every error before training starts
        self.task.encode(self.model, val, training=False)
        trainer = Trainer(self.model, config, checkpoint_dir=checkpoint_dir, on_progress=on_progress)
        self.model.trainable.train()
        objective = HeadObjective(self.task, self.model, examples, val, dropout=config.backbone_dropout)
        return trainer.fit_objective(objective, resume=resume)

    # --- use ----------------------------------------------------------------------------------
    def predict(self, inputs, batch_size: int = 32) -> list[dict]:
        self.model.trainable.eval()
        return self.task.predict(self.model, _dataset(inputs), batch_size=batch_size)

    def evaluate(
        self, data, batch_size: int = 32, calibrate=None, progress: Callable[[int], None] | None = None
    ) -> dict:
        """The task's metrics (entity P/R/F1, or SQuAD EM/F1, or accuracy) and speed; ``calibrate`` is unused."""
        self.model.trainable.eval()
        ds = _dataset(data)
        self.model.cached_prefix()
        t0 = time.perf_counter()
        report = self.task.evaluate(self.model, ds, batch_size=batch_size)
        seconds = time.perf_counter() - t0
        if progress:
            progress(len(ds))
        return {**report, "examples_per_s": len(ds) / seconds if seconds else 0.0, "eval_seconds": seconds}

    # --- save / load --------------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        b = self.model.backbone
        manifest = {
            "method": self.method_name,
            "method_config": self.method_config,
            "backbone": {"id": b.model_id, "fingerprint": b.fingerprint(), "kind": b.kind},
            "head": self.task.to_dict(),
            "template": None,
            "verbalizer": None,
            **(extra or {}),
        }
        self.manifest = manifest
        return artifact.save(path, manifest, self.model.trainable.trainable_state())

    @classmethod
    def from_artifact(cls, path: Path, manifest: dict, weights: dict, backbone: Backbone) -> HeadTaskModel:
        head = manifest["head"]
        task = cls.create(
            backbone, head["kind"], head["labels"], manifest["method"], manifest["method_config"], head["settings"]
        )
        try:
            task.model.trainable.load_trainable_state(weights)
        except (RuntimeError, KeyError) as e:
            raise artifact.ArtifactError(f"{path}: weights do not fit the method and head ({e}).") from None
        task.model.trainable.eval()
        task.manifest = manifest
        return task
