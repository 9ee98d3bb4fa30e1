"""A pack: one artifact holding many tasks on one backbone (manifest + safetensors, written atomically).

Each task is stored as the plain prompt-tuning table its prompt amounts to (``tasks.NAME``) with its template
and verbalizer, so ``pack.task(NAME)`` is an ordinary ``PromptTask``; the strategy's own parameters (the shared
prompt, rank-one factors, progressive prompts) are kept as ``params.KEY`` for transfer to new tasks.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from prompttune.core import artifact
from prompttune.core.backbone import Backbone
from prompttune.core.errors import ArtifactError, DataError
from prompttune.core.template import Template
from prompttune.core.verbalizer import Verbalizer
from prompttune.multitask.specs import task_index
from prompttune.prompt_task import PromptTask
from prompttune.task import Data, Task


def save_pack(
    path: str | Path,
    backbone: Backbone,
    strategy: str,
    tasks: dict[str, PromptTask],
    params: dict[str, Tensor],
    pack_info: dict,
    task_info: dict[str, dict],
    extra: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a pack: every task's template, verbalizer, method config and table, and the strategy's parameters."""
    entries, weights = [], {}
    for name, task in tasks.items():
        entries.append(
            {
                "name": name,
                "method": task.method_name,
                "method_config": task.method_config,
                **task.manifest_fields(),
                **task_info.get(name, {}),
            }
        )
        weights[f"tasks.{name}"] = task.model.method.table().detach()
    weights |= {f"params.{k}": v.detach() for k, v in params.items()}
    manifest = {
        "method": f"multitask:{strategy}",
        "method_config": {"strategy": strategy},
        "backbone": {"id": backbone.model_id, "fingerprint": backbone.fingerprint(), "kind": backbone.kind},
        "template": None,
        "verbalizer": None,
        "pack": {"strategy": strategy, **pack_info, "tasks": entries},
        **(extra or {}),
    }
    return artifact.save(path, manifest, weights, overwrite=overwrite)


class PackTask(Task):
    """A loaded pack. It predicts through one of its tasks: ``pack.task(NAME)`` (the CLI's ``--task NAME``)."""

    def __init__(self, path: Path, manifest: dict, weights: dict[str, Tensor], backbone: Backbone):
        super().__init__(None, manifest["method"], manifest["method_config"], manifest)
        self.path, self.weights, self._backbone = path, weights, backbone
        self.entries = {e["name"]: e for e in manifest["pack"]["tasks"]}
        self._tasks: dict[str, PromptTask] = {}

    @property
    def backbone(self) -> Backbone:
        return self._backbone

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    @property
    def strategy(self) -> str:
        return self.manifest["pack"]["strategy"]

    def task(self, name: str) -> PromptTask:
        """Task ``name`` of the pack, as a PromptTask (built once)."""
        task_index(self.names, name, f"pack {self.path}")
        if name not in self._tasks:
            e = self.entries[name]
            verb = Verbalizer.from_dict(e["verbalizer"])
            task = PromptTask.create(
                self.backbone,
                verb.labels,
                e["method"],
                e["method_config"],
                Template.from_spec(e["template"]),
                verbalizer=verb,
            )
            try:
                task.model.method.load_table(self.weights[f"tasks.{name}"])
            except (KeyError, RuntimeError) as err:
                raise ArtifactError(
                    f"{self.path}: the weights of task {name} are missing or do not fit ({err})."
                ) from None
            task.manifest = {**self.manifest, **e, "template": e["template"], "verbalizer": e["verbalizer"]}
            self._tasks[name] = task
        return self._tasks[name]

    def params(self, prefix: str = "params.") -> dict[str, Tensor]:
        return {k[len(prefix) :]: v for k, v in self.weights.items() if k.startswith(prefix)}

    def _which(self) -> DataError:
        return DataError(
            f"{self.path}: a pack of {len(self.names)} tasks ({', '.join(self.names)}); name one with --task NAME."
        )

    def evaluate(self, data: Data, batch_size: int = 32, calibrate: bool = True, progress=None) -> dict:
        raise self._which()

    def predict(self, inputs: Data, batch_size: int = 32) -> list:
        raise self._which()

    def predictions(self, inputs: Data) -> list[dict]:
        raise self._which()

    @property
    def metric(self) -> str:
        return "accuracy"

    @classmethod
    def reads(cls, manifest: dict) -> bool:
        return bool(manifest.get("pack"))

    @classmethod
    def from_artifact(cls, path: Path, manifest: dict, weights: dict, backbone: Backbone) -> PackTask:
        return cls(path, manifest, weights, backbone)


def select_task(task: Task, name: str | None, where: str) -> Task:
    """The task ``--task NAME`` names in a pack; a pack without ``--task`` stays (it asks for one when used)."""
    if name is None:
        return task
    if not isinstance(task, PackTask):
        raise DataError(f"--task {name}: {where} is a single-task artifact, not a pack; leave out --task.")
    return task.task(name)
