"""The library's verbs: load an artifact, train one from files. The task objects live in task.py (the base),
prompt_task.py (label words), heads/task.py (heads) and probe/ (linear probes); everything here is importable
from ``prompttune``.

import prompttune
task = prompttune.load("runs/sst2")
task.predict(["a gripping, funny film"])   # [Prediction(label='positive', scores={...})]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from prompttune.core import artifact, atomic
from prompttune.core.backbone import Backbone
from prompttune.core.data import PAIR_FIELDS, from_records, infer_fields, load_rows, unused_fields_warning
from prompttune.core.errors import DataError
from prompttune.core.generate import GenerationConfig, Generator
from prompttune.core.template import Template
from prompttune.distributed.context import init_from_env, main_writes
from prompttune.generation.task import GenerationTask, apply_decoding, is_generation_data, split_by_input
from prompttune.heads.base import HEAD_KINDS, detect_kind
from prompttune.heads.task import HeadTask
from prompttune.methods.options import method_class, settings_for
from prompttune.multitask.pack import select_task  # also registers packs (PackTask) for load
from prompttune.probe import ProbeTask
from prompttune.prompt_task import Prediction, PromptTask
from prompttune.task import Task, load, split_validation
from prompttune.train import Callback, TrainConfig, TrainResult

PROBE = "probe"  # --head probe: a linear probe of the frozen decoder's layers (probe/), not a HEAD_KINDS head

__all__ = [
    "Prediction",
    "PromptTask",
    "HeadTask",
    "ProbeTask",
    "GenerationTask",
    "Task",
    "load",
    "train_from_file",
    "evaluate",
    "predict",
    "generate",
]


def checkpoint_dir_for(out_dir: Path) -> Path:
    """Where training writes its checkpoint: beside the artifact, ``OUT.checkpoint``."""
    return out_dir.with_name(out_dir.name + ".checkpoint")


def pairs_default_to_probe(rows, chosen: dict) -> bool:
    """The default recipe for pair rows (text_a + text_b: NLI, paraphrase) is a probe (``--head probe``) when
    nothing asks for a prompt (no method, template, verbalizer, demos, calibration or --init-from).

    Measured with the default decoder, 2,000 training rows each, held-out rows never trained on
    (``benchmarks/long_rows_recipe.sh``): RTE 0.641 vs 0.508 for prompt tuning, MNLI 0.590 vs 0.358,
    MRPC 0.730 vs 0.689, QQP 0.762 vs 0.624; the probe in 102-228 s and 1.25 GB (its forward pass stops at the
    layer it reads), prompt tuning in 553-663 s (its 780 s budget) and 1.9-2.3 GB. Soft prompts on the 135M
    decoder stay near chance on NLI pairs."""
    return infer_fields(rows) == PAIR_FIELDS and not any(chosen.values())


def train_from_file(
    data: str | Path,
    out_dir: str | Path | None = None,
    *,
    val: str | Path | None = None,
    limit: int | None = None,
    head: str | None = None,
    task_type: str | None = None,
    method: str | None = None,
    method_config: dict | Sequence[str] | None = None,
    shared_settings: dict | None = None,
    template: str | dict | None = None,
    verbalizer: str | None = None,
    demos: int = 0,
    calibrate: bool = False,
    max_length: int | None = None,
    config: TrainConfig | None = None,
    model: str | None = None,
    backbone: Backbone | None = None,
    dtype: str | None = None,
    device: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
    on_start: Callable[[Task, dict], None] | None = None,
    init_from: str | Path | None = None,
    source_task: str | None = None,
) -> tuple[Task, TrainResult, dict]:
    """Train a task on a file of rows and save it: what `prompttune train` does, in one call.

    The data decides the task: label words (a PromptTask) unless ``head`` is given or the rows carry a head
    kind's fields (tokens + tags: tagging; context + question + answers: extractive QA); pair rows with nothing
    asking for a prompt get a probe (``pairs_default_to_probe``). The file is read
    once; every data error surfaces before the backbone loads. ``on_start(task, info)`` is called once the
    task is built (info: rows, labels, trainable parameters), before the first step.
    ``method_config``: the method's settings, as a dict or as ``KEY=VALUE`` strings (typed by the method's
    config); ``shared_settings``: settings several methods have (num_virtual_tokens, init, ...), each applied
    only where the chosen method has it. Default method: prompt-tuning (label words) or p-tuning-v2 (heads).
    ``init_from``: a pack (``train-multi``, ``continual``) whose prompt the new one starts from: its shared
    prompt, or ``source_task``'s, or (``source_task="mixture"``) an input-dependent mixture of its source prompts
    (multitask/transfer.py, multitask/attempt.py).
    Returns (task, result, summary); the summary is what `prompttune train --json` prints.
    """
    config = config or TrainConfig()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:  # before anything loads: never after an hour of training
        artifact.check_output(out, overwrite or resume, "--out")
        atomic.check_output_dir(
            checkpoint_dir_for(out), "--out", lambda p: (p / "state.json").exists(), "training checkpoint", True
        )
    if method is not None:
        method_class(method)  # an unknown method is an error before anything loads
    if head is not None and head not in HEAD_KINDS and head != PROBE:
        raise DataError(f"--head {head}: unknown; choose one of {', '.join(sorted([*HEAD_KINDS, PROBE]))}.")
    if head == PROBE and (method not in (None, "zero-shot") or verbalizer or demos or calibrate or init_from):
        raise DataError(
            "--head probe: trains a linear read-out of the frozen model's layers, no prompt; leave out --method, "
            "--verbalizer, --demos, --calibrate and --init-from (or choose another --head)."
        )
    if limit is not None and limit < 1:
        raise DataError(f"--limit {limit}: must be at least 1 (or leave it out for every row).")
    if task_type not in (None, "generate"):
        raise DataError(f"--task {task_type}: unknown; 'generate' is the one to name (others follow the data).")
    if init_from is not None:
        from prompttune.multitask.transfer import source_prompt

        source_prompt(init_from, source_task)  # a missing pack or unknown source task: an error before loading
    elif source_task is not None:
        raise DataError(f"--source-task {source_task}: names a task of the --init-from pack; give --init-from PACK.")
    rows = load_rows(data)
    writes = task_type == "generate" or (head is None and is_generation_data(rows))  # rows with a target
    if writes and (head or verbalizer or demos or calibrate):
        raise DataError("--head / --verbalizer / --demos / --calibrate: not for generation tasks (--task generate).")
    kind = None if writes else head or detect_kind(rows)
    chosen = {"method": method, "template": template, "verbalizer": verbalizer, "demos": demos,
              "calibrate": calibrate, "init_from": init_from}  # fmt: skip
    probe_by_default = kind is None and not writes and pairs_default_to_probe(rows, chosen)
    kind = PROBE if probe_by_default else kind
    train_ds = rows.limit(limit)
    val_ds = load_rows(val) if val else None
    if val_ds is None:
        split = split_by_input if writes else split_validation  # generation: an input's rows stay on one side
        train_ds, val_ds = split(train_ds, 0.1, config.seed)
    default = GenerationTask.default_method if writes else PromptTask.default_method
    method = method or (HeadTask.default_method if kind else default)
    method_config = settings_for(method, shared_settings, method_config)
    dist = init_from_env(device)  # under a launcher: join the run (a GPU rank picks its GPU) before loading
    if backbone is None:
        head_model = HeadTask.default_model if kind and kind != PROBE else None  # a probe reads a decoder
        backbone = Backbone.load(model or head_model, dtype=dtype, device=device)
    if probe_by_default and backbone.kind != "decoder":
        kind = None  # an encoder has no probe default (nor label words: PromptTask says so)
    if kind == PROBE:
        task: Task = ProbeTask.for_data(backbone, train_ds, template)
    elif kind:
        task = HeadTask.for_data(backbone, train_ds, kind, method, method_config, config.seed, max_length)
    elif writes:
        task = GenerationTask.for_data(backbone, train_ds, method, method_config, config.seed, template)
    else:
        task = PromptTask.for_data(backbone, train_ds, method, method_config, config.seed, template, verbalizer, demos)
    info = {"n_train": len(train_ds), "n_val": len(val_ds), "labels": task.labels, "kind": kind}
    warnings = []
    if template is None and kind in (None, PROBE) and not writes:  # a built-in template chose what the model reads
        unused = unused_fields_warning(train_ds)
        warnings += [unused] if unused else []
    info["warnings"] = list(warnings)  # known before the first step: shown at the start too
    if writes:
        info["max_target_tokens"] = task.longest_target  # generation: no labels; the longest target instead
    if init_from is not None:
        from prompttune.multitask.transfer import transfer

        task, info["init_from"] = transfer(task, init_from, source_task)  # mixture: a MixtureTask in its place
    info["trainable_params"] = task.trainable_params
    if on_start:
        on_start(task, info)
    result = task.fit(
        train_ds, val_ds, config, callbacks, checkpoint_dir=checkpoint_dir_for(out) if out else None, resume=resume
    )
    if val is None:
        task.record["data"]["val"] = "seeded 10% of train"
    if calibrate and isinstance(task, PromptTask):
        task.calibrate()
    main_writes(dist, (lambda: task.save(out, overwrite=overwrite or resume)) if out is not None else None)
    if result.steps and result.initial_val is not None and result.best_val <= result.initial_val:
        kept = "the initial one" if result.best_step == 0 else f"step {result.best_step}'s, which only ties it"
        warnings.append(
            f"no validation after step 0 beat the untrained prompt ({result.metric} {result.best_val:.4f}), so the "
            f"saved prompt is {kept}: {_steps_and_warmup(result.steps, config.warmup_steps)}. "
            + (
                f"The time budget ({config.time_budget_s:.0f} s) stopped it: raise --time-budget. "
                if result.stopped_by == "time budget"
                else "Train longer (--max-steps / --epochs), or try another --lr."
            )
        )
    summary = {
        "artifact": str(out) if out is not None else None,
        **({"head": kind} if kind else {}),
        **({"task": "generate"} if writes else {}),
        "method": task.method_name,
        "metric": result.metric,
        "trainable_params": info["trainable_params"],
        "steps": result.steps,
        "train_seconds": result.train_seconds,
        "train_examples_per_s": result.train_examples_per_s,
        "best_val_accuracy": result.best_val,  # the validation metric named by "metric" (kept for old readers)
        "initial_val_accuracy": result.initial_val,
        "best_step": result.best_step,
        "kept_steps": result.kept_steps,  # the validated states averaged into the saved one (--average-best)
        "averaged_val": result.averaged_val,  # that average's own validation value (None: one state kept)
        "stopped_early": result.stopped_early,
        "stopped_by": result.stopped_by,  # "patience", "time budget" (TrainConfig.time_budget_s) or None
        "n_train": len(train_ds),
        "n_val": len(val_ds),
        "processes": dist.world if dist is not None else 1,  # data-parallel (torchrun, accelerate, --nproc)
        **({"init_from": info["init_from"]} if init_from is not None else {}),
        "warnings": warnings,
    }
    return task, result, summary


def evaluate(
    prompt: str | Path,
    data: str | Path,
    *,
    batch_size: int = 32,
    limit: int | None = None,
    calibrate: bool | str | None = None,
    demos: int = 0,
    demo_selector: str = "random",
    demos_from: str | Path | None = None,
    verbalizer: str | None = None,
    calibration_rows: str | Path | None = None,
    db: str | None = None,
    seed: int = 0,
    model: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
    on_load: Callable[[str], None] | None = None,
    task_name: str | None = None,
    decoding: dict | None = None,
) -> dict:
    """Score any prompt on labelled rows: what `prompttune eval` does, in one call.

    ``prompt``: an artifact directory, a registry reference (``name@production``), a template file or a built-in
    template name; ``task_name`` picks a task of a pack (``train-multi``, ``continual``). An artifact applies its
    own calibration (``calibrate`` None or True); a hard prompt is scored
    through the zero-shot method, with optional demos and contextual calibration: ``calibrate`` None or "auto"
    (default) applies it only where it raises accuracy on check rows (``calibration_rows``, else the demo pool's
    unshown rows, else a seeded part of ``data`` left out of the report; see ``hard.calibration_check``), True
    always, False never.
    """
    from prompttune.hard.evaluate import evaluate_template
    from prompttune.registry.resolve import resolve_prompt

    kind, target, shown = resolve_prompt(str(prompt), db)
    if limit is not None and limit < 1:
        raise DataError(f"--limit {limit}: must be at least 1 (or leave it out for every row).")
    rows = load_rows(data).limit(limit)
    if kind == "artifact":
        if demos or demos_from or verbalizer or calibration_rows:
            raise DataError(
                "--demos / --demos-from / --verbalizer / --calibration-rows apply to hard prompts; "
                "an artifact has its own."
            )
        if on_load:
            on_load(str(target))
        task = select_task(load(target, model, dtype=dtype, device=device), task_name, str(target))
        apply_decoding(task, decoding)  # a generation artifact's --num-beams / --length-penalty
        report = task.evaluate(rows, batch_size=batch_size, calibrate=calibrate is not False, progress=progress)
        return (
            report
            | {"artifact": str(target), "data": str(data), "prompt": shown}
            | ({"task": task_name} if task_name else {})
        )
    if task_name is not None:
        raise DataError(f"--task {task_name}: picks a task of a pack; {shown} is not an artifact.")
    if decoding:
        raise DataError(
            f"--num-beams / --length-penalty / --draft-tokens: for generation artifacts; {shown} is a hard prompt."
        )
    pool = load_rows(demos_from) if demos_from else None
    check = load_rows(calibration_rows) if calibration_rows else None
    if on_load:
        on_load(model or "smollm2 (default)")
    backbone = Backbone.load(model, dtype=dtype, device=device)
    report = evaluate_template(
        target,
        rows,
        backbone,
        batch_size=batch_size,
        calibrate="auto" if calibrate is None else calibrate,
        demos=demos,
        demo_selector=demo_selector,
        demos_from=pool,
        verbalizer=verbalizer,
        seed=seed,
        calibration_rows=check,
    )
    return report | {"prompt": shown, "data": str(data)}


def predict(
    artifact_dir: str | Path,
    inputs: Sequence[str] | str | Path,
    model: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    task_name: str | None = None,
    decoding: dict | None = None,
) -> list[dict]:
    """One JSON-able record per input (texts, or the rows of a .jsonl/.csv file): the input and its prediction.

    ``task_name``: the task of a pack to predict with; ``decoding``: a generation artifact's settings for this
    call (``{"num_beams": 4}``)."""
    ds = load_rows(inputs) if isinstance(inputs, str | Path) else from_records(inputs, "arguments")
    task = select_task(load(artifact_dir, model, dtype=dtype, device=device), task_name, str(artifact_dir))
    apply_decoding(task, decoding)
    return task.predictions(ds)


def generate(
    text: str,
    artifact_dir: str | Path | None = None,
    system: str = "You are a helpful assistant.",
    config: GenerationConfig | None = None,
    model: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
) -> str:
    """Free text for ``text``: after an artifact's prompt, or after a plain chat prompt with ``system`` text."""
    config = config or GenerationConfig()
    if artifact_dir is not None:
        task = load(artifact_dir, model, dtype=dtype, device=device)
        return task.generate(text, config=config)
    backbone = Backbone.load(model, dtype=dtype, device=device)
    template = Template.from_spec({"system": system, "user": "{{ text }}"})
    return Generator(backbone).complete(template, {"text": text}, config)


def _steps_and_warmup(steps: int, warmup: int) -> str:
    """How many steps ran and how many of them warmed the learning rate up (all, where it never finished)."""
    if steps <= warmup:
        ran = f"{steps} step{'s' if steps != 1 else ''} ran"
        return f"{ran}, all within the {warmup}-step warm-up (the learning rate never reached its peak)"
    return f"{steps} steps ran, {warmup} of them warm-up"
