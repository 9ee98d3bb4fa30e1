"""`prompttune eval` for any prompt: an artifact, a registry reference, a template file or a built-in name.

A hard prompt (a template) is scored exactly like a soft prompt: the same verbalizer read-out over the
backbone, the same metrics; it runs through the zero-shot method (its soft slots left out), with
optional few-shot demos (fixed, seeded random, or nearest neighbours) and contextual calibration.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from prompttune.api import PromptTask
from prompttune.core.backbone import Backbone
from prompttune.core.data import Dataset, check_fields, load_rows
from prompttune.core.errors import ArtifactError, PromptTuneError
from prompttune.core.metrics import classification_report
from prompttune.core.template import BUILTIN, Template
from prompttune.core.verbalizer import Verbalizer
from prompttune.hard.fewshot import SELECTORS, Embed, NearestDemos, select


def resolve_prompt(spec: str, db: str | None = None) -> tuple[str, Template | Path, str]:
    """("artifact", dir, shown) or ("template", Template, shown) for a path, registry ref or template name."""
    path = Path(spec)
    if path.is_dir():
        return "artifact", path, spec
    from prompttune.registry.names import looks_like_ref  # the registry (SQLAlchemy) loads only for a reference

    if looks_like_ref(spec) and not path.exists():
        from prompttune.registry import Registry
        from prompttune.registry.content import as_template, materialize

        registry = Registry(db)
        version = registry.get(spec)
        shown = f"{spec} ({version.ref}, {version.hash[:12]})"
        if version.kind == "soft-prompt":
            out = Path(tempfile.mkdtemp(prefix="prompttune-registry-")) / version.name
            return "artifact", materialize(version, out), shown
        return "template", as_template(version), shown
    if not path.exists() and spec not in BUILTIN and "{{" not in spec and "[label]" not in spec:
        raise ArtifactError(
            f"{spec}: no such artifact (nor a template file, a built-in template or a registry reference like "
            f"name@production). Train one with: prompttune train DATA --out {spec}"
        )
    return "template", Template.from_spec(spec), spec


def run_any_eval(
    prompt: str,
    data: Path,
    batch_size: int = 32,
    calibrate: bool | None = None,
    model: str | None = None,
    console: Console | None = None,
    demos: int = 0,
    demo_selector: str = "random",
    demos_from: Path | None = None,
    verbalizer: str | None = None,
    db: str | None = None,
    seed: int = 0,
) -> dict:
    console = console or Console(stderr=True)
    kind, target, shown = resolve_prompt(prompt, db)
    if kind == "artifact":
        if demos or demos_from or verbalizer:
            raise PromptTuneError(
                "--demos / --demos-from / --verbalizer apply to hard prompts; an artifact has its own."
            )
        from prompttune.cli.commands import run_eval

        report = run_eval(target, data, batch_size, True if calibrate is None else calibrate, model, console)
        report["prompt"] = shown
        return report
    rows = load_rows(data)
    with console.status(f"loading backbone {model or 'smollm2 (default)'}"):
        backbone = Backbone.load(model)
    report = evaluate_template(
        target,
        rows,
        backbone,
        batch_size=batch_size,
        calibrate=bool(calibrate),
        demos=demos,
        demo_selector=demo_selector,
        demos_from=load_rows(demos_from) if demos_from else None,
        verbalizer=verbalizer,
        seed=seed,
    )
    report |= {"prompt": shown, "data": str(data)}
    return report


def evaluate_template(
    template: Template,
    rows: Dataset,
    backbone: Backbone,
    batch_size: int = 32,
    calibrate: bool = False,
    demos: int = 0,
    demo_selector: str = "random",
    demos_from: Dataset | None = None,
    verbalizer: str | Verbalizer | None = None,
    seed: int = 0,
    embed: Embed | None = None,
) -> dict:
    """Accuracy and per-class figures of a hard prompt on labelled rows (same metrics as an artifact's)."""
    if demo_selector not in SELECTORS:
        raise PromptTuneError(f"--demo-selector {demo_selector!r}: choose one of {', '.join(SELECTORS)}.")
    if demos < 0:
        raise PromptTuneError(f"--demos {demos}: must be 0 or more.")
    if demos and demos_from is None:
        raise PromptTuneError("--demos needs --demos-from TRAIN: the labelled rows demos are drawn from.")
    template = template.hard()
    fields = sorted(template.variables)
    check_fields(rows, fields, need_label=True)
    if demos_from is not None:
        check_fields(demos_from, fields, need_label=True)
    labels = sorted(set(rows.labels()) | set(demos_from.labels() if demos_from else []))
    verb = verbalizer if isinstance(verbalizer, Verbalizer) else Verbalizer.parse(labels, verbalizer)

    def task_for(shots: list[dict]) -> PromptTask:
        tmpl = template.with_demos(shots) if shots else template
        task = PromptTask.create(
            backbone, labels, "zero-shot", {}, tmpl, verbalizer=Verbalizer.from_dict(verb.to_dict())
        )
        if calibrate:
            task.calibrate()
        return task

    t0 = time.perf_counter()
    if demos and demo_selector == "knn":
        nearest = NearestDemos(demos_from, fields, demos, embed)
        groups: dict[tuple, list[int]] = {}
        for i, idx in enumerate(nearest.indices(rows.rows)):
            groups.setdefault(tuple(idx), []).append(i)
        probs = torch.empty(len(rows), len(labels))
        for idx, members in groups.items():
            task = task_for(nearest.demos(idx))
            subset = [rows.rows[i] for i in members]
            probs[members] = task.model.score(task.model.encode(subset), batch_size=batch_size, calibrate=calibrate)
        gold = task.model.label_indices(rows)
    else:
        shots = select(demos_from, fields, demos, demo_selector, seed) if demos else []
        task = task_for(shots)
        gold = task.model.label_indices(rows)
        probs = task.model.score(task.model.encode(rows), batch_size=batch_size, calibrate=calibrate)
    seconds = time.perf_counter() - t0
    report = classification_report(probs.argmax(-1), gold, labels)
    report |= {
        "examples_per_s": len(rows) / seconds if seconds else 0.0,
        "eval_seconds": seconds,
        "demos": demos,
        "demo_selector": demo_selector if demos else None,
        "calibrated": calibrate,
    }
    return report
