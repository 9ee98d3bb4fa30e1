"""Task: one base for every prompt bound to a frozen backbone — create, fit, evaluate, predict, save, load.

The read-outs are subclasses: ``PromptTask`` (label words scored by the LM head, prompt_task.py) and
``HeadTask`` (a trained head for classification, tagging or extractive QA, heads/task.py). The base owns
what they share: reading data, the train/validation split, the training run (``fit``), the manifest and
save/load. A subclass says how to build its training objective, how to evaluate and predict, and what its
manifest holds beside the common fields; it never branches on a method's name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar

from torch import nn

from prompttune.core import artifact
from prompttune.core.backbone import Backbone
from prompttune.core.data import Dataset, from_records, load_rows
from prompttune.core.errors import DataError
from prompttune.train import Callback, Objective, TrainConfig, Trainer, TrainResult

Data = str | Path | Dataset | Iterable


def as_dataset(data: Data) -> Dataset:
    """A Dataset from a file path (.jsonl/.csv), a Dataset, or records (strings or dicts of fields)."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str | Path):
        return load_rows(data)
    return from_records(data)


def split_validation(train: Dataset, fraction: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset]:
    """A seeded validation split carved from the training rows (errors say to pass --val when too few)."""
    if len(train) < 4:
        raise DataError(
            f"{train.source}: {len(train)} rows is too few to carve a validation split; "
            "give at least 4 rows or pass --val."
        )
    return train.split(fraction, seed)


def data_record(train: Dataset, val: Dataset, val_given: bool) -> dict:
    """What a manifest records about the rows a task was fitted on (sources, hashes, counts)."""
    return {
        "train": train.source,
        "train_hash": train.fingerprint(),
        "n_train": len(train),
        "val": val.source if val_given else "seeded 10% of train",
        "val_hash": val.fingerprint(),
        "n_val": len(val),
    }


class Task:
    """A prompt (hard, hard + soft, or soft + head) on a frozen backbone.

    Subclasses set ``model`` (an nn.Module with ``backbone``, ``trainable``, ``cached_prefix``/``clear_cache``)
    and implement ``objective``, ``evaluate``, ``predict``, ``manifest_fields`` and ``from_artifact``.
    """

    #: tasks a manifest can describe, tried in order by ``load`` (each class says which it reads)
    kinds: ClassVar[list[type[Task]]] = []

    def __init__(self, model: nn.Module, method_name: str, method_config: dict, manifest: dict | None = None):
        self.model = model
        self.method_name = method_name
        self.method_config = method_config
        self.manifest = manifest or {}
        self.record: dict = {}  # what the last ``fit`` adds to the manifest: metrics, training settings, data

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Task.kinds.append(cls)

    # --- what every task has -----------------------------------------------------------------------
    @property
    def backbone(self) -> Backbone:
        return self.model.backbone

    @property
    def metric(self) -> str:
        """The name of the validation metric ``fit`` maximizes."""
        raise NotImplementedError

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.model.trainable.parameters() if p.requires_grad)

    # --- training ----------------------------------------------------------------------------------
    def objective(self, train: Dataset, val: Dataset, config: TrainConfig) -> Objective:
        """The training objective over these rows; every data error is raised here, before any step."""
        raise NotImplementedError

    def fit(
        self,
        train: Data,
        val: Data | None = None,
        config: TrainConfig | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
    ) -> TrainResult:
        """Train the task's soft prompt (and head) on ``train``, validated on ``val`` (default: a seeded 10%).

        Keeps the best state seen at validation; writes a checkpoint to ``checkpoint_dir`` at every validation
        (``resume=True`` continues from it). Returns the result, whose ``metric`` names what ``best_val`` holds.
        A task with nothing to train (a hard prompt, ``zero-shot``) is only validated.
        """
        config = (config or TrainConfig()).with_lr(type(self.model.method).default_lr)
        train_ds = as_dataset(train)
        val_ds = as_dataset(val) if val is not None else None
        if val_ds is None:
            train_ds, val_ds = split_validation(train_ds, 0.1, config.seed)
        objective = self.objective(train_ds, val_ds, config)
        trainer = Trainer(
            objective,
            config,
            Path(checkpoint_dir) if checkpoint_dir else None,
            callbacks,
            data_fingerprint=f"{train_ds.fingerprint()}+{val_ds.fingerprint()}",
        )
        if self.trainable_params:
            result = trainer.fit(resume=resume)
        else:
            val_metric = trainer.validate()
            result = TrainResult(metric=objective.metric, best_val=val_metric, history=[{"step": 0, "val": val_metric}])
        self.record = {
            "metrics": result.metrics(),
            "training": config.to_dict(),
            "data": data_record(train_ds, val_ds, val is not None),
        }
        return result

    # --- use ---------------------------------------------------------------------------------------
    def evaluate(self, data: Data, batch_size: int = 32, calibrate: bool = True, progress=None) -> dict:
        """The task's metrics on labelled rows, with ``examples_per_s`` and ``eval_seconds``."""
        raise NotImplementedError

    def predict(self, inputs: Data, batch_size: int = 32) -> list:
        raise NotImplementedError

    def predictions(self, inputs: Data) -> list[dict]:
        """One JSON-able record per input: {"input": what was given, **the prediction}."""
        raise NotImplementedError

    # --- save / load -------------------------------------------------------------------------------
    def manifest_fields(self) -> dict:
        """What this kind of task adds to the manifest (template and verbalizer, or head)."""
        raise NotImplementedError

    def save(self, path: str | Path, extra: dict | None = None, overwrite: bool = True) -> Path:
        """Write the artifact (manifest + safetensors weights) atomically; returns its path.

        A folder holding anything but an artifact is never replaced; an earlier artifact only with ``overwrite``.
        """
        b = self.backbone
        manifest = {
            "method": self.method_name,
            "method_config": self.method_config,
            "backbone": {"id": b.model_id, "fingerprint": b.fingerprint(), "kind": b.kind},
            "template": None,
            "verbalizer": None,
            **self.manifest_fields(),
            **self.record,
            **(extra or {}),
        }
        self.manifest = manifest
        return artifact.save(path, manifest, self.model.trainable.trainable_state(), overwrite=overwrite)

    @classmethod
    def reads(cls, manifest: dict) -> bool:
        """Whether this class loads an artifact with this manifest."""
        raise NotImplementedError

    @classmethod
    def from_artifact(cls, path: Path, manifest: dict, weights: dict, backbone: Backbone) -> Task:
        raise NotImplementedError


def load(path: str | Path, model: str | Backbone | None = None, dtype: str | None = None, device: str | None = None):
    """Load an artifact onto its backbone (or onto ``model``: a loaded Backbone, or a name that must match).

    Returns the Task subclass the manifest describes (a PromptTask, or a HeadTask for ``train --head``).
    """
    path = Path(path)
    manifest, weights = artifact.read(path)
    if isinstance(model, Backbone):
        backbone = model
    else:
        backbone = Backbone.load(model or manifest["backbone"]["id"], dtype=dtype, device=device)
    artifact.check_backbone(path, manifest, backbone.model_id, backbone.fingerprint())
    for cls in Task.kinds:
        if cls.reads(manifest):
            return cls.from_artifact(path, manifest, weights, backbone)
    raise artifact.ArtifactError(f"{path}: no task kind reads this manifest; is it from a newer prompttune?")
