"""The ``optimized`` arm: an optimizer of programs (programs/optimizers.py) searches a readable prompt.

The program is one step ``FIELDS -> label: one of WORDS``: the fields the comparison's template reads, and one
word per label (the run's ``--verbalizer``, else the labels themselves), so the demos the search picks show the
words the read-out scores. It searches on the cell's training rows (demos) and validation rows (scores), on the
in-process model, each label chosen by its score as the verbalizer scores it. The found program is written as a
template (programs/export.py: instruction, fields, demos as turns) and the cell scores that template on the test
rows like every other arm.

Settings (``-o optimized.KEY=VALUE``): ``optimizer`` (bootstrap, random-search, mipro; default random-search: on
the default decoder it is the best accuracy per minute, mipro's proposals are generated text and each of its
trials a validation minibatch), the search's named limits (``max_candidates``, ``max_model_calls``,
``max_seconds``, ``max_demos``, ``max_labeled_demos``, ``num_instructions``, ``minibatch_size``, bounded as in
``prompttune optimize``), ``ensemble`` (1-8: above 1, the best candidates' label scores averaged when that beats
the best alone; the cell scores every member's template and sums their scores, ensemble_task.py) with
``ensemble_select`` (greedy, top), ``formats`` (true/false, default true: layouts and field names screened
first, at most half of ``max_candidates``), ``instruction`` (mipro: a candidate instruction of yours),
``batch_calibration`` (true/false, default true: demo candidates with label offsets, programs/calibration.py; a
found program's offsets become the template's calibration) and ``calibrate``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import fields

from prompttune.compare.searched.base import SearchContext, SearchedArm, check_names, option_error, register
from prompttune.compare.searched.ensemble_task import EnsembleTask
from prompttune.core.errors import DataError, PromptTuneError
from prompttune.core.verbalizer import Verbalizer
from prompttune.programs.optimizers import OPTIMIZERS

DEFAULT_OPTIMIZER = "random-search"
LIMIT_KEYS = (
    "max_candidates", "max_model_calls", "max_seconds", "max_demos", "max_labeled_demos", "num_instructions",
    "minibatch_size",
)  # fmt: skip
OPTIONS = {
    "optimizer": str, "instruction": str, **{k: int for k in LIMIT_KEYS}, "max_seconds": float,
    "batch_calibration": bool, "ensemble": int, "ensemble_select": str, "formats": bool,
}  # fmt: skip
SEARCH_KEYS = ("batch_calibration", "ensemble", "ensemble_select", "formats")  # SearchConfig's, as they are
NOT_HERE = {
    "lr": "the optimizer trains nothing",
    "max_steps": "the search is bounded by max_candidates, max_model_calls and max_seconds",
    "batch_size": "the search scores one row at a time",
    "demos": "the optimizer chooses the demos (max_demos, max_labeled_demos)",
    "ema": "the optimizer trains nothing",
    "patience": "the search is bounded by max_candidates, max_model_calls and max_seconds",
    "eval_every": "every candidate is scored on validation",
}


def search_config(name: str, options: dict, seed: int = 0):
    """The SearchConfig of these settings; a value out of its bounds is an error naming ``-o NAME.KEY``."""
    from prompttune.programs.search import SearchConfig

    values = {k: options[k] for k in (*LIMIT_KEYS, *SEARCH_KEYS) if k in options}
    for key, value in values.items():
        try:
            SearchConfig(**{key: value})
        except DataError as e:
            raise option_error(name, key, value, str(e).split(": ", 1)[-1]) from None
    return SearchConfig(**values, seed=seed)


def check(name: str, options: dict) -> None:
    check_names(ARM, name, options, NOT_HERE)
    optimizer = options.get("optimizer", DEFAULT_OPTIMIZER)
    if optimizer not in OPTIMIZERS:
        raise option_error(name, "optimizer", optimizer, f"choose one of {', '.join(OPTIMIZERS)}.")
    if options.get("instruction") is not None and optimizer != "mipro":
        raise option_error(name, "instruction", options["instruction"], "instructions are searched by mipro only.")
    if options.get("ensemble", 1) > 1 and options.get("calibrate"):
        raise option_error(
            name, "calibrate", options["calibrate"], "an ensemble's members keep the calibration the search chose."
        )
    search_config(name, options)


def find(ctx: SearchContext):
    from prompttune.programs.files import Pipeline
    from prompttune.programs.lm import BackboneLM
    from prompttune.programs.metrics import make_metric
    from prompttune.programs.modules import Predict
    from prompttune.programs.optimizers import optimize
    from prompttune.programs.signature import Field, Signature

    verb = Verbalizer.parse(ctx.labels, ctx.settings.get("verbalizer"))
    word = {label: verb.words[label][0] for label in verb.labels}  # what the program answers with
    label_of = {w: label for label, w in word.items()}
    if len(label_of) != len(word):
        raise PromptTuneError("--verbalizer: two labels share their first word; the optimized arm needs one each.")
    first = ctx.train.rows[0].fields
    names = [k for k in first if k in ctx.template.variables] or sorted(ctx.template.variables)
    signature = Signature(tuple(Field(n) for n in names), (Field("label", "", "label", tuple(word.values())),))
    program = Pipeline([("classify", Predict(signature))])

    def rows(ds) -> list[dict]:
        return [{**{n: r.fields[n] for n in names}, "label": word[r.label]} for r in ds.rows]

    optimizer = ctx.options.get("optimizer", DEFAULT_OPTIMIZER)
    config = search_config("optimized", ctx.options, ctx.seed)
    total = config.max_candidates

    def progress(entry: dict, best: float) -> None:
        info = f"candidate {entry['candidate'] + 1}: {entry['val_score']:.3f}, best {best:.3f}"
        ctx.emit({"event": "step", "step": entry["candidate"] + 1, "total": total, "info": info})

    kw = {"instructions": (ctx.options["instruction"],)} if ctx.options.get("instruction") else {}
    t0 = time.perf_counter()
    result = optimize(
        optimizer, program, rows(ctx.train), rows(ctx.val), make_metric("accuracy", ["label"]),
        BackboneLM(ctx.backbone), config, progress, **kw,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    members = getattr(result.program, "members", None) or [result.program]
    found = [_member(m, ctx, verb, word, label_of, optimizer) for m in members]
    task = found[0][0] if len(found) == 1 else EnsembleTask([t for t, _, _ in found])
    prompts = [template.to_dict() for _, template, _ in found]
    calibrations = [c for _, _, c in found]
    offsets = [t.model.verbalizer.calibration if c else None for t, _, c in found]
    return task, {
        "train_seconds": seconds,
        "best_val_accuracy": result.best_val_score,
        "model_calls": result.model_calls,
        "search": {
            "optimizer": optimizer,
            "candidates_evaluated": result.candidates_evaluated,
            "baseline_val_score": result.baseline_val_score,
            "stopped": result.stopped,
            "config": {f.name: getattr(config, f.name) for f in fields(config)},
        },
        "prompt": prompts[0] if len(found) == 1 else prompts,  # an ensemble: one template per member
        "calibration": calibrations[0] if len(found) == 1 else calibrations,  # the cell scores the templates with it
        "label_offsets": offsets[0] if len(found) == 1 else offsets,  # in the labels' order
    }


def _member(program, ctx: SearchContext, verb, word: dict, label_of: dict, optimizer: str):
    """One found program as a zero-shot task on its template, with the calibration the search chose."""
    from prompttune.programs.export import as_template
    from prompttune.prompt_task import PromptTask

    template = as_template(program, label_of, f"found by compare's optimized arm ({optimizer})")
    verb = dataclasses.replace(verb, words=dict(verb.words), calibration=None)  # each member calibrates its own
    task = PromptTask.create(ctx.backbone, verb.labels, "zero-shot", {}, template, verbalizer=verb)
    (step,) = [p for _, p in program.named_predictors()]
    calibration = None
    if step.offsets is not None:  # batch calibration: the offsets, in the verbalizer's label order
        task.model.verbalizer.calibration = [step.offsets[word[label]] for label in verb.labels]
        calibration = "batch"
    elif step.calibrate:  # the search chose contextual calibration
        task.calibrate()
        calibration = "contextual"
    return task, template, calibration


ARM = register(
    SearchedArm(
        name="optimized",
        options=OPTIONS,
        harness=frozenset({"calibrate"}),
        defaults={"optimizer": DEFAULT_OPTIMIZER},
        check=check,
        find=find,
    )
)
