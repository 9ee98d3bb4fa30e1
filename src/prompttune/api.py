"""The Python API: build, train, save, load and use a prompt for a frozen backbone.

import prompttune
task = prompttune.load("runs/sst2")
task.predict(["a gripping, funny film"])   # [Prediction(label='positive', scores={...})]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from prompttune.core import artifact
from prompttune.core.backbone import Backbone, set_threads
from prompttune.core.data import Dataset, check_fields, from_records, infer_fields, load_rows
from prompttune.core.errors import DataError
from prompttune.core.metrics import classification_report
from prompttune.core.template import Template
from prompttune.core.verbalizer import Verbalizer
from prompttune.methods import build_method
from prompttune.scorer import PromptModel


@dataclass
class Prediction:
    label: str
    scores: dict[str, float]  # label -> probability


class PromptTask:
    """A prompt (hard, or hard + soft) bound to a frozen backbone, ready to predict and evaluate."""

    def __init__(self, model: PromptModel, method_name: str, method_config: dict, manifest: dict | None = None):
        self.model = model
        self.method_name = method_name
        self.method_config = method_config
        self.manifest = manifest or {}

    @classmethod
    def create(
        cls,
        backbone: Backbone,
        labels: list[str],
        method: str = "prompt-tuning",
        method_config: dict | None = None,
        template: str | dict | Template | None = None,
        fields: tuple[str, ...] = ("text",),
        verbalizer: str | Verbalizer | None = None,
        seed: int = 0,
    ) -> PromptTask:
        method_config = dict(method_config or {})
        tmpl = Template.from_spec(template, fields)
        verb = verbalizer if isinstance(verbalizer, Verbalizer) else Verbalizer.parse(labels, verbalizer)
        n_virtual = int(method_config.get("num_virtual_tokens", 16))
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)

        def factory(slots, ctx):
            return build_method(method, method_config, backbone, slots, ctx)

        model = PromptModel(backbone, tmpl, verb, factory, n_virtual, generator=gen)
        return cls(model, method, model.method.config.to_dict())

    # --- data in ------------------------------------------------------------------------------
    def _dataset(self, data: str | Path | Dataset | Iterable) -> Dataset:
        if isinstance(data, Dataset):
            return data
        if isinstance(data, str | Path):
            return load_rows(data)
        return from_records(data)

    @property
    def labels(self) -> list[str]:
        return self.model.verbalizer.labels

    # --- use ----------------------------------------------------------------------------------
    def predict(self, inputs, batch_size: int = 32, calibrate: bool = True) -> list[Prediction]:
        """Label and per-label probabilities for each input (a string, a dict of fields, or a file)."""
        ds = self._dataset(inputs)
        check_fields(ds, sorted(self.model.template.variables), need_label=False)
        probs = self.model.score(self.model.encode(ds), batch_size=batch_size, calibrate=calibrate).exp()
        return [
            Prediction(self.labels[int(p.argmax())], dict(zip(self.labels, map(float, p), strict=True))) for p in probs
        ]

    def evaluate(
        self, data, batch_size: int = 32, calibrate: bool = True, progress: Callable[[int], None] | None = None
    ) -> dict:
        """Accuracy, per-class figures and speed on labelled rows."""
        ds = self._dataset(data)
        check_fields(ds, sorted(self.model.template.variables), need_label=True)
        gold = self.model.label_indices(ds)  # unknown labels are an error, before any scoring
        encoded = self.model.encode(ds)
        self.model.cached_prefix()  # computed once, not counted as per-example time
        t0 = time.perf_counter()
        probs = self.model.score(encoded, batch_size=batch_size, calibrate=calibrate, progress=progress)
        seconds = time.perf_counter() - t0
        report = classification_report(probs.argmax(-1), gold, self.labels)
        report["examples_per_s"] = len(ds) / seconds if seconds else 0.0
        report["eval_seconds"] = seconds
        return report

    def generate(
        self,
        text: str | dict,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
        stop: Sequence[str] = (),
    ) -> str:
        """Free text after the prompt; it ends before the first of the ``stop`` strings it would contain."""
        fields = {"text": text} if isinstance(text, str) else dict(text)
        missing = [v for v in self.model.template.variables if v not in fields]
        if missing:
            raise DataError(f"generate: the template needs field(s) {missing}; pass them as a dict.")
        return self.model.generate(fields, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, stop=stop)

    def calibrate(self) -> list[float]:
        return self.model.calibrate()

    # --- save / load --------------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        b = self.model.backbone
        manifest = {
            "method": self.method_name,
            "method_config": self.method_config,
            "backbone": {"id": b.model_id, "fingerprint": b.fingerprint(), "kind": b.kind},
            "template": self.model.template.to_dict(),
            "verbalizer": self.model.verbalizer.to_dict(),
            **(extra or {}),
        }
        self.manifest = manifest
        return artifact.save(path, manifest, self.model.method.trainable_state())


def load(path: str | Path, model: str | Backbone | None = None) -> PromptTask:
    """Load an artifact onto its backbone (or onto ``model``, which must be the same backbone).

    An artifact with a head (``train --head``) loads as a ``head_task.HeadTaskModel``.
    """
    set_threads()
    path = Path(path)
    manifest, weights = artifact.read(path)
    backbone = model if isinstance(model, Backbone) else Backbone.load(model or manifest["backbone"]["id"])
    artifact.check_backbone(path, manifest, backbone.model_id, backbone.fingerprint())
    if manifest.get("head"):  # a read-out head (classification, tagging, QA) instead of a verbalizer
        from prompttune.heads.task import HeadTaskModel

        return HeadTaskModel.from_artifact(path, manifest, weights, backbone)
    verb = Verbalizer.from_dict(manifest["verbalizer"])
    task = PromptTask.create(
        backbone,
        verb.labels,
        manifest["method"],
        manifest["method_config"],
        Template.from_spec(manifest["template"]),
        verbalizer=verb,
    )
    try:
        task.model.method.load_trainable_state(weights)
    except RuntimeError as e:
        raise artifact.ArtifactError(f"{path}: weights do not fit the method ({e}).") from None
    task.manifest = manifest
    return task


def prepare_data(
    train_path, val_path=None, limit: int | None = None, val_fraction: float = 0.1, seed: int = 0, template=None
) -> tuple[Dataset, Dataset, Template]:
    """Load, limit, split and validate training data; every error surfaces before training starts."""
    train = load_rows(train_path).limit(limit)
    if val_path:
        val = load_rows(val_path)
    else:
        if len(train) < 4:
            raise DataError(
                f"{train_path}: {len(train)} rows is too few to carve a validation split; "
                "give at least 4 rows or pass --val."
            )
        train, val = train.split(val_fraction, seed)
    shape = infer_fields(train) if template is None else ("text",)
    tmpl = Template.from_spec(template, shape)
    needed = sorted(tmpl.variables)
    check_fields(train, needed, need_label=True)
    check_fields(val, needed, need_label=True)
    return train, val, tmpl
