"""The ``pez`` and ``gcg`` arms: ``harden --method pez|gcg`` on the cell's training rows (readable/pez.py, gcg.py).

The comparison's template (its ``[soft]`` slots, the run's label words) is searched for real vocabulary tokens on
the training rows (pez: projected gradient descent; gcg: token swaps ranked by the gradient and tried on a batch);
every ``eval_every`` steps the tokens are scored on the validation rows, which pick the best. The found tokens are
written into the template as text, and the cell scores that hard template on the test rows like every other arm
(no soft vectors left: what is stored is text).

Settings (``-o ARM.KEY=VALUE``): ``tokens`` (per ``[soft]`` slot without a size, 1-64, default 8), ``init``
(labels, vocab or text), ``init_text``, ``vocab`` (readable, words, all; default words: the text tokenizes back),
the harness keys ``max_steps`` (the search's steps; default the run's ``--max-steps``), ``batch_size``,
``eval_every`` (default an eighth of the steps) and ``calibrate``; pez also ``lr`` (default 0.3 x the embeddings'
std), gcg also ``top_k`` (default 32) and ``candidates`` (default 16).
"""

from __future__ import annotations

from functools import partial

from prompttune.compare.searched.base import SearchContext, SearchedArm, check_names, option_error, register
from prompttune.core.errors import PromptTuneError
from prompttune.readable.gcg import GcgConfig, run_gcg
from prompttune.readable.harden import INITS as HARDEN_INITS
from prompttune.readable.harden import MAX_TOKENS
from prompttune.readable.pez import PezConfig, run_pez
from prompttune.readable.vocab import VOCABS

INITS = tuple(i for i in HARDEN_INITS if i != "soft")  # no soft prompt to start from: a cell trains none first
OPTIONS = {"tokens": int, "init": str, "init_text": str, "vocab": str}
SEARCH_OPTIONS = {"pez": {"confirm": bool}, "gcg": {"top_k": int, "candidates": int}}  # each search's own settings
HARNESS = {
    "pez": frozenset({"max_steps", "batch_size", "lr", "eval_every", "calibrate"}),
    "gcg": frozenset({"max_steps", "batch_size", "eval_every", "calibrate"}),
}
SEARCHES = {"pez": (PezConfig, run_pez), "gcg": (GcgConfig, run_gcg)}
NOT_HERE = {
    "demos": "the search learns the prompt's tokens; demos are the few-shot arm's",
    "ema": "the search keeps the best tokens, not an average",
    "patience": "the search keeps the best tokens over all its steps",
    "lr": "gcg tries swaps; it has no learning rate",
}


def search_config(name: str, options: dict, settings: dict, seed: int = 0):
    """The search's config from the settings (harness keys first, then the run's); an error names ``-o NAME.KEY``."""
    config_type = SEARCHES[name][0]
    steps = int(options.get("max_steps", settings.get("max_steps", 100)))
    values = {
        "steps": ("max_steps", steps),
        "batch_size": ("batch_size", int(options.get("batch_size", settings.get("batch_size", 16)))),
        "eval_every": ("eval_every", int(options.get("eval_every") or max(1, steps // 8))),
    }
    if "lr" in HARNESS[name]:
        values["lr"] = ("lr", options.get("lr"))
    for key in SEARCH_OPTIONS[name]:
        if key in options:
            values[key] = (key, options[key])
    for field, (key, value) in values.items():
        try:
            config_type(**{field: value})
        except PromptTuneError as e:
            raise option_error(name, key, value, str(e).split(": ", 1)[-1]) from None
    return config_type(**{f: v for f, (_, v) in values.items()}, seed=seed)


def check(name: str, options: dict) -> None:
    check_names(ARMS[name], name, options, NOT_HERE)
    tokens = options.get("tokens", 8)
    if not 1 <= tokens <= MAX_TOKENS:
        raise option_error(name, "tokens", tokens, f"give 1 to {MAX_TOKENS} tokens per [soft] slot.")
    for key, allowed in (("init", INITS), ("vocab", VOCABS)):
        if key in options and options[key] not in allowed:
            raise option_error(name, key, options[key], f"choose one of {', '.join(allowed)}.")
    if (options.get("init") == "text") != bool(options.get("init_text")):
        raise PromptTuneError(f"--method-option {name}.init=text and {name}.init_text=WORDS go together.")
    search_config(name, options, {})


def find(name: str, ctx: SearchContext):
    from prompttune.prompt_task import PromptTask
    from prompttune.readable.discrete import start_from_tokens
    from prompttune.readable.soft import TABLE_METHOD, hard_task, plain_verbalizer, slot_texts, with_text
    from prompttune.readable.vocab import Vocabulary
    from prompttune.train import Callback

    o = ctx.options
    config = search_config(name, o, ctx.settings, ctx.seed)
    method = {
        "num_virtual_tokens": o.get("tokens", 8),
        "init": o.get("init", "labels"),
        "init_text": o.get("init_text"),
    }
    if not ctx.template.compile(ctx.backbone.tokenizer, ctx.labels, 1).slot_sizes:
        raise PromptTuneError(
            f"--methods {name}: the template has no [soft] slot for {name} to fill with tokens; give a --template "
            "with one (e.g. the built-in classify)."
        )
    task = PromptTask.create(
        ctx.backbone, ctx.labels, TABLE_METHOD, method, ctx.template, verbalizer=ctx.settings.get("verbalizer"),
        seed=ctx.seed,
    )  # fmt: skip
    vocab = Vocabulary.of(ctx.backbone, o.get("vocab", "words"))
    start_from_tokens(task, vocab)
    steps = Callback(on_step=lambda ev: ctx.emit({"event": "step", **ev}))
    result = SEARCHES[name][1](task, vocab, ctx.train, ctx.val, config, [steps])
    texts, roundtrip = slot_texts(ctx.backbone, result.ids)
    template = with_text(ctx.template, texts, f"found by compare's {name} arm")
    verb = plain_verbalizer(task.model.verbalizer)
    return hard_task(ctx.backbone, template, verb), {
        "train_seconds": result.seconds,
        "train_examples_per_s": config.steps * config.batch_size / max(result.seconds, 1e-9),
        "steps": config.steps,
        "best_step": result.best_step,
        "best_val_accuracy": result.selection_accuracy,
        "search": {
            "lr": result.lr,
            "init": method["init"],
            "vocab": vocab.kind,
            "initial_val_accuracy": result.initial_accuracy,
            "text": {str(k): v for k, v in texts.items()},
            "roundtrip": roundtrip,
        },
        "prompt": template.hard().to_dict(),
    }


ARMS = {
    name: register(
        SearchedArm(
            name=name,
            options=OPTIONS | SEARCH_OPTIONS[name],
            harness=HARNESS[name],
            defaults={},
            check=check,
            find=partial(find, name),
        )
    )
    for name in SEARCHES
}
