"""`prompttune compare` on generation data (rows with a ``target``): hard prompts (zero-shot, few-shot), each
soft-prompt method and LoRA (or full fine-tuning) write the test inputs' text, ranked by ``--metric``.

The split keeps every row of an input on one side (E2E has several references per meaning representation);
each arm is a ``GenerationTask``: a registry method, or a baseline's trainable backbone behind the same
template, trained with the language-modelling loss on the target tokens and validated by ROUGE-L. The test
inputs are decoded greedily (bounded by the training targets' length) and scored against every reference
(BLEU, ROUGE-L, exact match, F1: all in each cell's record); the chosen metric is the cell's ``accuracy``
field, the one the report ranks by, and the report's column is named after it.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from prompttune.compare.arms import Arm
from prompttune.compare.searched import SEARCHED
from prompttune.compare.split import SPLIT_SEED, Split
from prompttune.core.data import Dataset, load_rows
from prompttune.core.errors import DataError, PromptTuneError

METRICS = {"bleu": ("bleu", "BLEU"), "rougeL": ("rougeL", "ROUGE-L"), "em": ("exact_match", "exact match")}
DEFAULT_METHODS = "zero-shot,few-shot,prompt-tuning,prefix-tuning,lora"
NOT_FOR_GENERATION = {
    "calibrated": "contextual calibration rescores label words; generation has none",
    "probe": "a probe classifies rows; it writes nothing",
}
SEARCHED_WHY = "it searches a prompt read out by label words; generation has none"  # compare/searched/


@dataclass(frozen=True)
class GenerationCompare:
    """What changes when a comparison's rows carry a target: the metric, the arms' check, the split."""

    metric: str  # a key of METRICS

    @property
    def label(self) -> str:
        return METRICS[self.metric][1]

    @property
    def settings(self) -> dict:
        return {"task": "generate", "metric": self.metric}

    def check_arms(self, names: list[str]) -> None:
        for name in names:
            why = NOT_FOR_GENERATION.get(name) or (SEARCHED_WHY if name in SEARCHED else None)
            if why:
                raise PromptTuneError(f"--methods {name}: not for generation data ({why}); leave it out.")

    @staticmethod
    def split(data, val, test, limit, val_rows) -> Split:
        return generation_split(data, val, test, limit, val_rows)


def for_data(data: str | Path, metric: str | None) -> GenerationCompare | None:
    """A GenerationCompare for rows with a ``target`` (``--metric`` default bleu); None for labelled rows."""
    from prompttune.generation.task import is_generation_data

    rows = load_rows(data)
    if not is_generation_data(rows):
        if metric is not None:
            raise PromptTuneError(
                f"--metric {metric}: for generation data (rows with a 'target' field); labelled rows are ranked "
                "by accuracy. Leave --metric out."
            )
        return None
    if metric is not None and metric not in METRICS:
        raise PromptTuneError(f"--metric {metric}: unknown; choose one of {', '.join(METRICS)}.")
    return GenerationCompare(metric or "bleu")


def generation_split(data, val, test, limit, val_rows) -> Split:
    """DATA's first ``limit`` rows less a seeded 20% of its inputs for test (unless --test) and 10% (or
    ``val_rows`` rows' worth) for validation (unless --val); no input on two sides."""
    from prompttune.generation.task import split_by_input

    pool = load_rows(data).limit(limit)
    if test:
        test_ds = load_rows(test)
    else:
        pool, test_ds = split_by_input(pool, 0.2, SPLIT_SEED)
    if val:
        val_ds = load_rows(val)
    else:
        fraction = (val_rows / len(pool)) if val_rows else 0.1
        if fraction >= 0.5:
            raise DataError(
                f"{data}: {len(pool)} training rows are too few to set {val_rows} apart for validation; "
                "pass --val, lower --val-rows, or give more rows."
            )
        pool, val_ds = split_by_input(pool, fraction, SPLIT_SEED)
    return Split(pool, val_ds, test_ds)


def demos_for(train: Dataset, fields: list[str], k: int, seed: int) -> list[dict]:
    """k seeded training rows of distinct inputs as demos: the prompt's fields and, as the answer, a target."""
    from prompttune.generation.task import group_by_input

    groups = group_by_input(train.rows, fields)
    if k > len(groups):
        raise DataError(f"--method-option few-shot.demos={k}: only {len(groups)} distinct training inputs.")
    picked = random.Random(seed).sample(groups, k)
    return [{**{f: row.fields[f] for f in fields}, "label": refs[0]} for row, refs in picked]


def build_task(arm: Arm, backbone, train: Dataset, template: str | None, seed: int):
    """The arm's GenerationTask: a registry method, or a baseline's trainable weights behind the same template."""
    import torch

    from prompttune.compare.baselines import BASELINES, create_model
    from prompttune.core.template import Template
    from prompttune.generation.model import GenerationModel
    from prompttune.generation.task import GenerationTask, default_template

    tmpl = Template.from_spec(template if template is not None else default_template(train))
    demos = int(arm.harness("demos", 0) or 0)
    if demos:
        tmpl = tmpl.with_demos(demos_for(train, sorted(tmpl.variables), demos, seed))
    if arm.method not in BASELINES:
        task = GenerationTask.create(backbone, arm.method, arm.method_config, tmpl, seed=seed)
    else:
        torch.manual_seed(seed)

        def build(factory):
            return GenerationModel(backbone, tmpl, factory, 16, generator=torch.Generator().manual_seed(seed))

        model = create_model(arm.method, backbone, arm.method_config, build)
        task = GenerationTask(model, arm.method, arm.method_config)
    task.bound_decoding(train)
    return task


def stored_bytes(task) -> int:
    """What one more task costs on disk: its trained tensors plus its template."""
    weights = sum(t.numel() * t.element_size() for t in task.model.method.trainable_state().values())
    return weights + len(json.dumps(task.model.template.to_dict()).encode())


def run_generation_cell(spec: dict, emit) -> dict:
    """One (arm, seed, size) cell on generation rows: train (if anything trains), write the test inputs, score."""
    import torch

    from prompttune.compare.baselines import BASELINES
    from prompttune.core.backbone import Backbone, set_threads
    from prompttune.train import Callback

    set_threads()
    t_start = time.perf_counter()
    arm = Arm.from_dict(spec["arm"])
    s = spec["settings"]
    seed = spec["seed"] if spec["seed"] is not None else 0
    split = generation_split(s["data"], s.get("val"), s.get("test"), s.get("limit"), s.get("val_rows"))
    train = split.train(spec["train_size"], seed)
    baseline = BASELINES.get(arm.method)
    if baseline and arm.harness("ema"):
        raise PromptTuneError(f"--method-option {arm.name}.ema: the moving average is for prompts; leave it 0.")
    if arm.harness("calibrate"):
        raise PromptTuneError(f"--method-option {arm.name}.calibrate: generation has no label words to calibrate.")
    backbone = Backbone.load(s.get("model"), dtype=(baseline.dtype if baseline and baseline.dtype else s.get("dtype")))
    task = build_task(arm, backbone, train, s.get("template"), seed)
    result: dict = {"trainable_params": task.trainable_params, "n_train": len(train), "steps": 0}
    if task.trainable_params:
        config = arm.train_config(s, seed)
        fit = task.fit(train, split.val, config, callbacks=[Callback(on_step=lambda ev: emit({"event": "step", **ev}))])
        result |= {
            "steps": fit.steps,
            "train_seconds": fit.train_seconds,
            "train_examples_per_s": fit.train_examples_per_s,
            "best_val_accuracy": fit.best_val,  # validation ROUGE-L
            "best_step": fit.best_step,
        }
    emit({"event": "eval", "n": len(split.test)})
    report = task.evaluate(split.test)
    key = METRICS[s["metric"]][0]
    return result | {
        "status": "ok",
        "metric": s["metric"],
        "accuracy": report[key],  # the ranking metric (0-100), under the name the report reads
        **{k: report[k] for k in ("bleu", "rougeL", "exact_match", "f1")},
        "n_test": report["n"],
        "eval_examples_per_s": report["examples_per_s"],
        "eval_tokens_per_s": report["tokens_per_s"],
        "samples": report["samples"],
        "stored_bytes": stored_bytes(task),
        "wall_seconds": time.perf_counter() - t_start,
        "threads": torch.get_num_threads(),
    }
