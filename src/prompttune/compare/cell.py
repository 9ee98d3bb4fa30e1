"""One cell of a comparison: one arm, one seed, one training-set size -> accuracy and cost.

Run in-process (``run_cell``) or, as the runner does, in its own process so its peak memory is its own
and a crash cannot take the other cells with it:

    python -m prompttune.compare.cell SPEC.json RESULT.json

The subprocess prints progress events as JSON lines on stdout and writes its result atomically.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from prompttune.compare.arms import PROBE, Arm
from prompttune.compare.baselines import BASELINES, create_model
from prompttune.compare.searched import SEARCHED, SearchContext
from prompttune.compare.split import make_split
from prompttune.core import atomic
from prompttune.core.backbone import Backbone, set_threads
from prompttune.core.errors import PromptTuneError
from prompttune.core.template import Template
from prompttune.core.verbalizer import Verbalizer
from prompttune.hard.fewshot import select_random
from prompttune.probe import ProbeTask
from prompttune.prompt_task import PromptTask
from prompttune.scorer import PromptModel
from prompttune.train import Callback


def build_task(arm: Arm, backbone: Backbone, labels: list[str], tmpl: Template, verbalizer: str | None, seed: int):
    """The arm's task: a registry method's PromptTask, a baseline's trainable backbone behind the same read-out,
    or a probe of the backbone's layers over the same template."""
    if arm.kind == PROBE:
        return ProbeTask.create(backbone, labels, tmpl)
    if arm.method not in BASELINES:
        return PromptTask.create(
            backbone, labels, arm.method, arm.method_config, tmpl, verbalizer=verbalizer, seed=seed
        )
    verb = Verbalizer.parse(labels, verbalizer)
    torch.manual_seed(seed)

    def build(factory):
        return PromptModel(backbone, tmpl, verb, factory, 16, generator=torch.Generator().manual_seed(seed))

    return PromptTask(create_model(arm.method, backbone, arm.method_config, build), arm.method, arm.method_config)


def stored_bytes(task) -> int:
    """What one more task costs on disk: its trained tensors plus its template and verbalizer (or labels); an
    ensemble's (compare/searched/ensemble_task.py) is its members'."""
    if members := getattr(task, "members", None):
        return sum(stored_bytes(m) for m in members)
    weights = sum(t.numel() * t.element_size() for t in task.model.trainable.trainable_state().values())
    return weights + len(json.dumps(task.manifest_fields()).encode())


def run_cell(spec: dict, emit: Callable[[dict], None] = lambda ev: None) -> dict:
    if spec["settings"].get("task") == "generate":
        from prompttune.compare.generation import run_generation_cell

        return run_generation_cell(spec, emit)
    set_threads()
    t_start = time.perf_counter()
    arm = Arm.from_dict(spec["arm"])
    s = spec["settings"]
    seed = spec["seed"] if spec["seed"] is not None else 0
    split = make_split(s["data"], s.get("val"), s.get("test"), s.get("limit"), s.get("val_rows"))
    train = split.train(spec["train_size"], seed)
    labels = split.labels()
    tmpl = Template.from_spec(s.get("template"), split.fields())
    demos = int(arm.harness("demos", 0) or 0)
    if demos:
        tmpl = tmpl.with_demos(select_random(train, sorted(tmpl.variables), demos, seed))
    baseline = BASELINES.get(arm.method)
    if baseline and arm.harness("ema"):
        raise PromptTuneError(f"--method-option {arm.name}.ema: the moving average is for prompts; leave it 0.")
    backbone = Backbone.load(s.get("model"), dtype=(baseline.dtype if baseline and baseline.dtype else s.get("dtype")))
    search, found = SEARCHED.get(arm.method), {}
    if search:  # a readable prompt searched on the rows (compare/searched/); it trains nothing below
        context = SearchContext(arm.options, s, backbone, train, split.val, labels, tmpl, seed, emit)
        task, found = search.find(context)
    else:
        task = build_task(arm, backbone, labels, tmpl, s.get("verbalizer"), seed)
    result: dict = {"n_train": len(train), "steps": 0}
    if arm.start_from:  # a transfer arm: the prompt starts from a pack's (multitask/transfer.py)
        from prompttune.multitask.transfer import transfer

        task, result["init_from"] = transfer(task, arm.start_from["pack"], arm.start_from["source_task"])
    trainable = result["trainable_params"] = task.trainable_params
    if trainable:
        config = arm.train_config(s, seed)
        progress = Callback(on_step=lambda ev: emit({"event": "step", **ev}))
        fit = task.fit(train, split.val, config, callbacks=[progress])
        result |= {
            "steps": fit.steps,
            "train_seconds": fit.train_seconds,
            "train_examples_per_s": fit.train_examples_per_s,
            "best_val_accuracy": fit.best_val,
            "best_step": fit.best_step,
        }
    calibrate = bool(arm.harness("calibrate", False))
    if calibrate:  # contextual calibration (over a search's own, where it chose one)
        task.calibrate()
        if found.get("calibration"):
            found |= {"calibration": "contextual", "label_offsets": task.model.verbalizer.calibration}
    calibrate = calibrate or bool(found.get("calibration"))  # a searched prompt's calibration applies as found
    emit({"event": "eval", "n": len(split.test)})
    report = task.evaluate(split.test, batch_size=s.get("eval_batch_size", 32), calibrate=calibrate)
    return (
        result
        | found
        | {
            "status": "ok",
            "accuracy": report["accuracy"],
            "macro_f1": report["macro_f1"],
            "n_test": report["n"],
            "eval_examples_per_s": report["examples_per_s"],
            "stored_bytes": stored_bytes(task),
            "wall_seconds": time.perf_counter() - t_start,
            "threads": torch.get_num_threads(),
        }
    )


def failure(error: BaseException) -> dict:
    """A failed cell's record: a user error's message, or the last line of anything else plus where."""
    if isinstance(error, PromptTuneError):
        return {"status": "failed", "error": str(error)}
    where = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    at = f" (at {Path(where[0].filename).name}:{where[0].lineno})" if where else ""
    return {"status": "failed", "error": f"{type(error).__name__}: {error}{at}"}


def main(argv: list[str]) -> int:
    spec_path, result_path = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())

    def emit(ev: dict) -> None:
        sys.stdout.write(json.dumps(ev) + "\n")
        sys.stdout.flush()

    try:
        result = run_cell(spec, emit)
        code = 0
    except Exception as e:  # noqa: BLE001 - any failure becomes the cell's record
        traceback.print_exc()
        result, code = failure(e), 1
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    atomic.write_json(result_path, result)
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
