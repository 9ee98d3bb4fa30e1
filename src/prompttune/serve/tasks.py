"""The task table: task name -> a loaded task on a shared frozen backbone (one Backbone per model id).

A SOURCE is what ``prompttune eval`` accepts as a PROMPT (``registry.resolve.resolve_prompt``):
- an artifact directory (a soft prompt with label words, or a head task), loaded with ``task.load`` onto
  the backbone its manifest names (shared with every other task on that model);
- one task of a pack (``train-multi`` / ``continual``): ``PACK#TASK`` (a pack without ``#TASK`` is an error
  listing its tasks); the same works for a pack in the registry (``packs@production#sst2``);
- a registry reference (``sst2@production``): a soft-prompt version is an artifact, a template version a
  hard prompt (with the label words it was stored with, if any);
- a template file or a built-in template name: with label words (given, or stored) a zero-shot label-word
  task (``PromptTask.create(backbone, labels, "zero-shot", {}, template)``); without, a generation task served
  by ``Generator.complete``.

Every task's constant prefix is computed when it loads, not on its first request, and held within the
``--prefix-cache-mb`` budget by ``prefix_cache.PrefixCache`` (least recently used evicted, recomputed on demand).
Adding, removing or replacing a task swaps one dict entry under a lock: requests already holding a task finish
with it. A task whose source is a registry reference that can move (``name@label``; not ``name@v3``) records
the version it loaded (``version_number``); ``follow.LabelFollower`` replaces it when the label moves.
"""

from __future__ import annotations

import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from prompttune.core.backbone import Backbone
from prompttune.core.errors import DataError
from prompttune.core.generate import Generator
from prompttune.core.template import Template
from prompttune.core.verbalizer import Verbalizer
from prompttune.serve.prefix_cache import PrefixCache

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_TASKS = 1024  # tasks in one server at most (each holds its prefix's keys/values)
MAX_LABELS = 256  # label words given for one hard-prompt task


class TaskConflict(DataError):
    """A task name already in use (HTTP 409)."""


class TaskNotFound(DataError):
    """No task by that name (HTTP 404)."""


def check_name(name: str, where: str = "task name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise DataError(
            f"{where} {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit."
        )
    return name


def parse_task_spec(spec: str) -> tuple[str, str]:
    """``NAME=SOURCE`` (a TASK argument) -> (name, source)."""
    name, sep, source = spec.partition("=")
    if not sep or not source:
        raise DataError(
            f"TASK {spec!r}: write NAME=SOURCE, e.g. sentiment=runs/sst2 or topics=classify (a template name)."
        )
    return check_name(name, "TASK"), source


def split_pack_task(source: str) -> tuple[str, str | None]:
    """``PACK#TASK`` -> (PACK, TASK); a source without ``#`` (or an existing path holding one) -> (source, None)."""
    if not isinstance(source, str) or "#" not in source or Path(source).exists():
        return source, None
    base, _, pick = source.rpartition("#")
    if not base or not pick:
        raise DataError(f"source {source!r}: write PACK#TASK, e.g. runs/pack#sst2 (one task of a pack).")
    return base, pick


def pack_task(task, pick: str | None, name: str, source: str):
    """The task to serve from a loaded artifact: itself, or the pack's task ``pick`` (``PACK#TASK``)."""
    from prompttune.multitask.pack import PackTask

    if not isinstance(task, PackTask):
        if pick is not None:
            raise DataError(f"task {name!r}: {source} is a single-task artifact, not a pack; leave out #{pick}.")
        return task
    if pick is None:
        raise DataError(
            f"task {name!r}: {source} is a pack of {len(task.names)} tasks ({', '.join(task.names)}); serve one "
            f"as NAME={source}#TASK, e.g. {task.names[0]}={source}#{task.names[0]}."
        )
    if pick not in task.names:
        raise DataError(f"task {name!r}: pack {source} has no task {pick!r}; it has {', '.join(task.names)}.")
    return task.task(pick)


def parse_labels(spec: str, flag: str = "--labels") -> list[str]:
    labels = [x.strip() for x in spec.split(",") if x.strip()]
    if len(labels) < 2 or len(labels) > MAX_LABELS or len(set(labels)) != len(labels):
        raise DataError(f"{flag} {spec!r}: give 2 to {MAX_LABELS} distinct labels separated by commas.")
    return labels


@dataclass
class ServedTask:
    """One task of the server: a label-word task, a head task, or a generation template."""

    name: str
    source: str
    shown: str  # what the source resolved to (registry version and hash)
    kind: str  # "labels" | "head" | "generation"
    backbone: Backbone
    task: object | None = None  # a PromptTask or a HeadTask
    template: Template | None = None  # generation tasks
    generator: Generator | None = field(default=None, repr=False)
    follows: str | None = None  # the registry reference it follows (name@label), if any
    version_number: int | None = None  # the registry version it was loaded from (when it follows one)
    version_hash: str | None = None
    options: tuple = ()  # (labels, verbalizer) as given: a replacement is loaded with the same

    @property
    def fields(self) -> list[str]:
        if self.kind == "labels":
            return sorted(self.task.model.template.variables)
        if self.kind == "generation":
            return sorted(self.template.variables)
        if hasattr(self.task, "head_kind"):
            return list(self.task.head_kind.fields)  # with the training target (tags, answers)
        return self.task.fields  # a probe: its template's fields

    @property
    def can_generate(self) -> bool:
        if self.kind == "labels":
            return self.task.model.generates  # an ATTEMPT mixture classifies only
        return self.kind == "generation"

    @property
    def prefix_owner(self):
        """What holds this task's cached prefix (``prefix_cache``): its PrefixModel, or its Generator."""
        return self.task.model if self.task is not None else self.generator

    def describe(self) -> dict:
        out = {"name": self.name, "source": self.source, "resolved": self.shown, "kind": self.kind}
        if self.follows:
            out["follows"], out["version"], out["version_hash"] = self.follows, self.version_number, self.version_hash
        out["model"] = self.backbone.model_id
        if self.kind != "head":  # a head kind's fields include its training target
            out["fields"] = self.fields
        if self.task is not None:
            out["method"] = self.task.method_name
            out["labels"] = list(self.task.labels)
        if self.kind == "head":
            out["head"] = self.task.kind
        return out


def followed(source: str) -> bool:
    """A registry reference that can come to name another version: name@label (not name@v3, not a path)."""
    from prompttune.registry.names import VERSION_RE, looks_like_ref  # SQLAlchemy loads only for a reference

    return looks_like_ref(source) and not Path(source).exists() and not VERSION_RE.fullmatch(source.split("@")[1])


def model_key(model: str | None) -> str:
    """The model id an artifact records for a --model value (aliases and folders resolved), without loading it."""
    from prompttune.core import defaults

    name = defaults.ALIASES.get(model or defaults.DEFAULT_DECODER, model or defaults.DEFAULT_DECODER)
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


class TaskTable:
    """Tasks by name, on backbones shared per model id. Thread-safe; loading happens outside the lock."""

    def __init__(
        self,
        model: str | None = None,
        registry: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        max_tasks: int = MAX_TASKS,
        prefix_cache_bytes: int | None = None,
        prefix_store_dtype=None,
    ):
        self.model, self.registry, self.dtype, self.device = model, registry, dtype, device
        self.max_tasks = max_tasks
        self.cache = PrefixCache(prefix_cache_bytes)
        self.prefix_store_dtype = prefix_store_dtype  # a torch dtype cached prefixes are kept in (None: as computed)
        self._registry = None
        self._tasks: dict[str, ServedTask] = {}
        self._backbones: dict[str, Backbone] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # one load at a time: two loads of one model share it

    # --- reading ---------------------------------------------------------------------------------
    def get(self, name: str) -> ServedTask:
        with self._lock:
            found = self._tasks.get(name)
        if found is None:
            raise TaskNotFound(f"task {name!r}: no such task; the server has: {', '.join(self.names()) or 'none'}.")
        return found

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._tasks)

    def all(self) -> list[ServedTask]:
        with self._lock:
            return [self._tasks[n] for n in sorted(self._tasks)]

    def backbones(self) -> list[Backbone]:
        with self._lock:
            return list({id(b): b for b in self._backbones.values()}.values())

    # --- changing --------------------------------------------------------------------------------
    def add(self, name: str, source: str, labels: list[str] | None = None, verbalizer: str | None = None) -> ServedTask:
        """Load ``source`` as task ``name`` (an error, naming the reason, leaves the table as it was)."""
        check_name(name)
        with self._lock:
            if name in self._tasks:
                raise TaskConflict(f"task {name!r}: already served; DELETE /v1/tasks/{name} first.")
            if len(self._tasks) >= self.max_tasks:
                raise DataError(f"task {name!r}: the server holds {self.max_tasks} tasks, its limit; remove one.")
        with self._load_lock:
            served = self._load(name, source, labels, verbalizer)
        self._store_in(served)
        with self._lock:
            if name in self._tasks:
                raise TaskConflict(f"task {name!r}: already served; DELETE /v1/tasks/{name} first.")
            self._tasks[name] = served
        self.cache.admit(served.prefix_owner)
        return served

    def remove(self, name: str) -> ServedTask:
        with self._lock:
            found = self._tasks.pop(name, None)
        if found is None:
            raise TaskNotFound(f"task {name!r}: no such task; the server has: {', '.join(self.names()) or 'none'}.")
        self.cache.forget(found.prefix_owner)
        return found

    def replace(self, old: ServedTask) -> ServedTask | None:
        """Load ``old``'s source again and swap it in, unless the task was removed or replaced meanwhile.

        Requests that already hold ``old`` finish with it; later ones get the new version. A load error is
        raised and leaves ``old`` serving.
        """
        with self._load_lock:
            new = self._load(old.name, old.source, *old.options)
        self._store_in(new)
        with self._lock:
            if self._tasks.get(old.name) is not old:
                return None
            self._tasks[old.name] = new
        self.cache.forget(old.prefix_owner)
        self.cache.admit(new.prefix_owner)
        return new

    def _store_in(self, served: ServedTask) -> None:
        owner = served.prefix_owner
        if self.prefix_store_dtype is not None and hasattr(owner, "prefix_store_dtype"):
            owner.prefix_store_dtype = self.prefix_store_dtype  # a PrefixModel; generators keep theirs as computed

    def registry_client(self):
        """One Registry for this table's --registry (opened on first use)."""
        from prompttune.registry import Registry

        with self._lock:
            if self._registry is None:
                self._registry = Registry(self.registry)
            return self._registry

    # --- loading ---------------------------------------------------------------------------------
    def backbone(self, model: str | None) -> Backbone:
        """The backbone for a model id, alias or folder: loaded once, shared by every task on it."""
        key = model_key(model or self.model)
        with self._lock:
            found = self._backbones.get(key)
        if found is None:
            found = Backbone.load(model or self.model, dtype=self.dtype, device=self.device)
            with self._lock:
                found = self._backbones.setdefault(found.model_id, found)
                self._backbones[key] = found
        return found

    def _load(self, name: str, source: str, labels: list[str] | None, verbalizer: str | None) -> ServedTask:
        from prompttune.registry.resolve import resolve_prompt

        if not isinstance(source, str) or not source.strip():
            raise DataError(f"task {name!r}: source must be an artifact directory, registry reference or template.")
        base, pick = split_pack_task(source)
        follows = base if followed(base) else None  # the registry reference (a pack task keeps its #TASK in source)
        # the version first, then the load: a label moving in between is seen (and loaded) at the next check
        version = self.registry_client().get(base, payload=False) if follows else None
        try:
            kind, target, shown = resolve_prompt(base, self.registry)
        except OSError as e:  # e.g. a long inline template read as a path: "File name too long"
            raise DataError(
                f"task {name!r}: source {source[:60]!r}...: {e.strerror}; give an artifact directory, a registry "
                "reference, a template file or a built-in template name (long templates: put them in a file)."
            ) from None
        if kind == "artifact":
            if labels or verbalizer:
                raise DataError(f"task {name!r}: labels / verbalizer apply to hard prompts; an artifact has its own.")
            try:
                served = self._load_artifact(name, source, Path(target), shown, pick)
            finally:
                tmp = Path(target).parent
                if not Path(base).is_dir() and tmp.name.startswith("prompttune-registry-"):
                    shutil.rmtree(tmp, ignore_errors=True)  # written from the registry to load
        elif pick is not None:
            raise DataError(f"task {name!r}: {base} is a template, not a pack; leave out #{pick}.")
        else:
            served = self._load_template(name, source, target, shown, labels, verbalizer)
        served.follows, served.options = follows, (labels, verbalizer)
        if version is not None:
            served.version_number, served.version_hash = version.number, version.hash
        return served

    def _load_artifact(self, name: str, source: str, path: Path, shown: str, pick: str | None) -> ServedTask:
        from prompttune.api import load  # importing api registers every task kind (PromptTask, HeadTask, packs)
        from prompttune.core import artifact

        manifest, _ = artifact.read(path)  # a damaged or foreign folder is an error naming it
        backbone = self.backbone(manifest["backbone"]["id"])  # the artifact's own model, shared per id
        task = pack_task(load(path, backbone), pick, name, source)  # another backbone's: an error naming both
        kind = "head" if manifest.get("head") or manifest.get("probe") else "labels"  # probes: answered as heads
        if pick is not None:
            shown = f"{shown}#{pick}"
        if kind == "head":
            task.model.trainable.eval()
        return ServedTask(name, source, shown, kind, backbone, task=task)

    def _load_template(self, name, source, template, shown, labels, verbalizer) -> ServedTask:
        from prompttune.prompt_task import PromptTask

        backbone = self.backbone(self.model)
        stored = getattr(template, "label_words", ())  # a registry template's stored words
        if not labels and stored:
            labels = [label for label, _ in stored]
        if not labels:
            if verbalizer:
                raise DataError(f"task {name!r}: a verbalizer needs labels (--labels {name}=LABEL,LABEL).")
            template = template.hard()
            return ServedTask(name, source, shown, "generation", backbone, template=template,
                              generator=Generator(backbone))  # fmt: skip
        if stored and not verbalizer:
            verb = template.stored_verbalizer(labels)
        else:
            verb = Verbalizer.parse(labels, verbalizer)
        task = PromptTask.create(backbone, labels, "zero-shot", {}, template.hard(), verbalizer=verb)
        return ServedTask(name, source, shown, "labels", backbone, task=task)
