"""ProbeTask: a linear probe on the frozen decoder's features, for rows a template renders (``--head probe``).

import prompttune
rte = prompttune.load("runs/rte")          # an artifact trained with --head probe
rte.predict([{"text_a": "A man sleeps.", "text_b": "Someone is awake."}])

The row is rendered by the task's template (by default the built-in one for the rows' fields, its soft slots
left empty), run once through the frozen decoder, and its last token's state in ``layers`` is the feature vector
(``features.py``). A logistic regression over those features is the whole trained part (``head.py``): there is
no gradient through the model, so training costs one forward pass per row, and the regularization is chosen on
the validation rows. Where soft prompts do not learn (NLI pairs on the 135M default decoder stay at chance), the
decoder's middle layers already hold the answer linearly: see the README's long-rows table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from prompttune.core.backbone import Backbone
from prompttune.core.data import Dataset
from prompttune.core.errors import ArtifactError, DataError
from prompttune.core.metrics import classification_report
from prompttune.core.template import Template
from prompttune.distributed.context import current
from prompttune.probe.features import default_layers, row_features
from prompttune.probe.head import ProbeHead, choose_strength
from prompttune.prompt_task import PromptTask
from prompttune.task import Data, Task, as_dataset, data_record, split_validation
from prompttune.train import Callback, TrainConfig, TrainResult


class ProbeModel(nn.Module):
    """The template's prompt (a zero-shot PromptModel: prefix cache, rendering, padding) and the probe's head."""

    def __init__(self, prompt, head: ProbeHead, layers: tuple[int, ...]):
        super().__init__()
        self.prompt, self.head, self.layers = prompt, head, layers

    @property
    def backbone(self) -> Backbone:
        return self.prompt.backbone

    @property
    def method(self):
        return self.prompt.method

    @property
    def trainable(self) -> ProbeHead:
        return self.head

    @property
    def template(self) -> Template:
        return self.prompt.template

    def cached_prefix(self):
        return self.prompt.cached_prefix()

    def cached_prefix_bytes(self) -> int:
        return self.prompt.cached_prefix_bytes()

    def clear_cache(self) -> None:
        self.prompt.clear_cache()

    def features(self, ds: Dataset, progress: Callable[[int], None] | None = None) -> Tensor:
        return row_features(self.prompt, self.prompt.encode(ds).ids, self.layers, progress)

    def shared_features(self, ids: list[list[int]], progress: Callable[[int], None] | None = None) -> Tensor:
        """The features of encoded rows; in a data-parallel run (``--nproc``, torchrun) read in parts: each rank
        runs every ``world``-th row by length and the parts are summed into the whole on every rank."""
        ctx = current()
        if ctx is None or ctx.world == 1:
            return row_features(self.prompt, ids, self.layers, progress)
        mine = sorted(range(len(ids)), key=lambda i: len(ids[i]))[ctx.rank :: ctx.world]
        part = row_features(self.prompt, [ids[i] for i in mine], self.layers, progress)
        whole = torch.zeros(len(ids), len(self.layers) * self.backbone.hidden_size)
        whole[mine] = part
        return ctx.all_reduce_sum(whole)


class ProbeTask(Task):
    """A trained (or new) linear probe on a frozen decoder."""

    model: ProbeModel

    @classmethod
    def create(
        cls, backbone: Backbone, labels: list[str], template: Template, layers: Sequence[int] | None = None
    ) -> ProbeTask:
        if backbone.kind != "decoder":
            raise DataError(f"--head probe: reads a decoder's layers; {backbone.model_id} is an encoder (use "
                            "--head classification there).")  # fmt: skip
        n_layers = backbone.kv_layout[0]
        layers = tuple(int(i) for i in layers) if layers is not None else default_layers(n_layers)
        bad = [i for i in layers if not 0 <= i <= n_layers]
        if bad or not layers:
            raise DataError(f"probe layers {list(layers)}: each must be 0..{n_layers} (the model's layers).")
        prompt = PromptTask.create(backbone, labels, "zero-shot", {}, template.hard()).model
        head = ProbeHead(len(layers) * backbone.hidden_size, len(labels))
        return cls(ProbeModel(prompt, head, layers), "zero-shot", {})

    @classmethod
    def for_data(cls, backbone: Backbone, train: Dataset, template: str | dict | Template | None = None) -> ProbeTask:
        """A new probe for these training rows: their labels and their fields' built-in template (or ``template``)."""
        shaped = PromptTask.for_data(backbone, train, "zero-shot", {}, template=template)
        return cls.create(backbone, shaped.labels, shaped.model.template)

    @property
    def kind(self) -> str:
        return "probe"

    @property
    def labels(self) -> list[str]:
        return self.model.prompt.verbalizer.labels

    @property
    def fields(self) -> list[str]:
        return sorted(self.model.template.variables)

    @property
    def metric(self) -> str:
        return "accuracy"

    # --- training -----------------------------------------------------------------------------
    def fit(
        self,
        train: Data,
        val: Data | None = None,
        config: TrainConfig | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
    ) -> TrainResult:
        """Features of every row once (one forward pass each), then the head by L-BFGS for each regularization
        strength; the one best on validation is refitted on train + validation rows. Nothing to checkpoint:
        ``checkpoint_dir`` and ``resume`` are accepted for the common signature."""
        config = config or TrainConfig()
        train_ds = as_dataset(train)
        val_ds = as_dataset(val) if val is not None else None
        if val_ds is None:
            train_ds, val_ds = split_validation(train_ds, 0.1, config.seed)
        prompt = self.model.prompt
        y, y_val = prompt.label_indices(train_ds), prompt.label_indices(val_ds)  # unknown labels: errors first
        ids, ids_val = prompt.encode(train_ds).ids, prompt.encode(val_ds).ids  # row errors before any forward pass
        ctx = current()
        world = ctx.world if ctx is not None else 1
        callbacks = callbacks if ctx is None or ctx.is_main else ()  # one progress report: rank 0's, as the Trainer
        total, done, t0 = -(-len(train_ds) // world) + -(-len(val_ds) // world), 0, time.perf_counter()

        def progress(n: int) -> None:
            nonlocal done
            done += n
            rate = done / max(time.perf_counter() - t0, 1e-9)
            info = f"reading features, {rate:.1f} ex/s"  # no loss: nothing trains until every row is read
            event = {"step": done, "total": total, "loss": None, "lr": 0.0, "examples_per_s": rate, "info": info}
            for cb in callbacks:
                cb.on_step(event)

        x, x_val = self.model.shared_features(ids, progress), self.model.shared_features(ids_val, progress)
        c, grid = choose_strength(x, y, x_val, y_val, len(self.labels))
        best = 0.0
        for i, g in enumerate(grid, 1):
            best = max(best, g["val"])
            for cb in callbacks:
                event = {"step": i, "total": len(grid), "metric": "accuracy", "val": g["val"], "best_val": best}
                cb.on_validation(event)
        self.model.head.fit(torch.cat([x, x_val]), torch.cat([y, y_val]), c)
        seconds = time.perf_counter() - t0
        chosen = next(i for i, g in enumerate(grid, 1) if g["c"] == c)
        history = [{"step": i, "val": g["val"], "c": g["c"]} for i, g in enumerate(grid, 1)]
        result = TrainResult(
            metric="accuracy", steps=len(grid), train_seconds=seconds, train_examples=len(train_ds) + len(val_ds),
            best_val=grid[chosen - 1]["val"], best_step=chosen, history=history,
        )  # fmt: skip
        self.model.head.eval()
        self.record = {
            "metrics": result.metrics(),
            "training": {"probe_c": c, "seed": config.seed},
            "data": data_record(train_ds, val_ds, val is not None),
        }
        return result

    # --- use ----------------------------------------------------------------------------------
    @torch.no_grad()
    def probabilities(self, inputs: Data) -> Tensor:
        return self.model.head(self.model.features(as_dataset(inputs))).softmax(-1)

    def predict(self, inputs: Data, batch_size: int = 32) -> list[dict]:
        probs = self.probabilities(inputs)
        return [
            {"label": self.labels[int(p.argmax())], "scores": dict(zip(self.labels, map(float, p), strict=True))}
            for p in probs
        ]

    def predictions(self, inputs: Data) -> list[dict]:
        ds = as_dataset(inputs)
        names = self.fields
        shown = [r.fields.get("text") or " | ".join(str(r.fields.get(v, "")) for v in names) for r in ds.rows]
        return [{"input": s, **p} for s, p in zip(shown, self.predict(ds), strict=True)]

    def evaluate(
        self, data: Data, batch_size: int = 32, calibrate=None, progress: Callable[[int], None] | None = None
    ) -> dict:
        """Accuracy, per-label precision/recall/F1 and speed; ``calibrate`` is unused (a probe's scores are its own)."""
        ds = as_dataset(data)
        gold = self.model.prompt.label_indices(ds)
        self.model.cached_prefix()
        t0 = time.perf_counter()
        with torch.no_grad():
            pred = self.model.head(self.model.features(ds, progress)).argmax(-1)
        seconds = time.perf_counter() - t0
        report = classification_report(pred, gold, self.labels)
        return {**report, "examples_per_s": len(ds) / seconds if seconds else 0.0, "eval_seconds": seconds}

    # --- save / load --------------------------------------------------------------------------
    def manifest_fields(self) -> dict:
        return {
            "template": self.model.template.to_dict(),
            "probe": {"labels": self.labels, "layers": list(self.model.layers)},
        }

    @classmethod
    def reads(cls, manifest: dict) -> bool:
        return bool(manifest.get("probe"))

    @classmethod
    def from_artifact(cls, path: Path, manifest: dict, weights: dict, backbone: Backbone) -> ProbeTask:
        probe = manifest["probe"]
        task = cls.create(backbone, probe["labels"], Template.from_spec(manifest["template"]), probe["layers"])
        try:
            task.model.head.load_trainable_state(weights)
        except (RuntimeError, KeyError) as e:
            raise ArtifactError(f"{path}: weights do not fit the probe ({e}).") from None
        task.model.head.eval()
        task.manifest = manifest
        return task
