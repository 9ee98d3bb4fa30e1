"""`prompttune harden`: a soft prompt, or a task's rows, turned into a hard prompt written as a template.

- ``nearest``: each virtual token of an artifact's soft prompt is replaced by its nearest vocabulary token
  (cosine), and the tokens' text stands where the template's ``[soft]`` slots stood;
- ``pez``: a discrete prompt learned by projected gradient descent (pez.py) on labelled rows, in the soft
  slots of an artifact's template (starting from its soft prompt by default), or of the default template
  for DATA, as ``train`` picks it;
- ``gcg``: the same search by greedy coordinate gradient (gcg.py): token swaps ranked by the gradient, tried on
  a batch, the best kept if it lowers the loss.

The written template is scored as a hard prompt (no calibration) on the report rows (``--val``, else the rows
not trained on), beside the soft prompt (the artifact's, with its calibration) and the hand-written prompt
(the template with its soft slots left out). The figures go in the JSON report and in the file.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from prompttune.core.backbone import Backbone
from prompttune.core.data import Dataset, check_fields, load_rows
from prompttune.core.errors import PromptTuneError
from prompttune.core.verbalizer import Verbalizer
from prompttune.prompt_task import PromptTask
from prompttune.readable.discrete import start_from_tokens
from prompttune.readable.gcg import GcgConfig, run_gcg
from prompttune.readable.inspection import check_limit
from prompttune.readable.output import check_template_output, write_template
from prompttune.readable.pez import PezConfig, run_pez
from prompttune.readable.soft import (
    TABLE_METHOD,
    accuracy,
    hard_task,
    load_prompt_task,
    plain_verbalizer,
    slot_texts,
    soft_tables,
    with_tables,
    with_text,
)
from prompttune.readable.vocab import VOCABS, Vocabulary
from prompttune.task import split_validation
from prompttune.train import Callback

SEARCHES = {"pez": run_pez, "gcg": run_gcg}  # discrete searches over tokens: (task, vocab, train, select, config)
CONFIGS = {"pez": PezConfig, "gcg": GcgConfig}
HARDEN_METHODS = ("nearest", *SEARCHES)
ONLY = {
    "lr": ("--lr", "pez"),
    "confirm": ("--confirm", "pez"),
    "top_k": ("--top-k", "gcg"),
    "candidates": ("--candidates", "gcg"),
}
INITS = ("soft", "labels", "vocab", "text")
MAX_TOKENS = 64  # soft tokens per [soft] slot a hard prompt is searched for, at most
DEFAULT_TOKENS = 8


def _check_flags(method: str, is_artifact: bool, data, tokens, init, template, init_text=None) -> str | None:
    """Every flag that does not fit the input is an error naming it, before anything loads; returns the init."""
    if (init == "text") != bool(init_text):
        raise PromptTuneError("--init text and --init-text 'some words' go together (the words pez starts from).")
    if method not in HARDEN_METHODS:
        raise PromptTuneError(f"--method {method}: unknown; choose one of {', '.join(HARDEN_METHODS)}.")
    if tokens is not None and not 1 <= tokens <= MAX_TOKENS:
        raise PromptTuneError(f"--tokens {tokens}: must be 1-{MAX_TOKENS}.")
    if init is not None and init not in INITS:
        raise PromptTuneError(f"--init {init}: unknown; choose one of {', '.join(INITS)}.")
    if method == "nearest":
        if not is_artifact:
            raise PromptTuneError(
                "--method nearest projects a trained soft prompt: give an ARTIFACT (or --method pez on DATA)."
            )
        for flag, value in (
            ("--tokens", tokens),
            ("--init", init),
            ("--init-text", init_text),
            ("--template", template),
        ):
            if value is not None:
                raise PromptTuneError(
                    f"{flag}: applies to --method pez or gcg; nearest keeps the artifact's soft tokens."
                )
        return None
    if is_artifact:
        if data is None:
            raise PromptTuneError(f"--method {method} on an ARTIFACT learns on labelled rows: give --data FILE.")
        if template is not None:
            raise PromptTuneError("--template: an ARTIFACT brings its own template; --template is for DATA.")
        init = init or "soft"
        if tokens is not None and init == "soft":
            raise PromptTuneError(
                "--tokens: starting from the artifact's soft prompt keeps its size; add --init vocab."
            )
        return init
    if data is not None:
        raise PromptTuneError("--data: DATA (the argument) holds the rows already; --data goes with an ARTIFACT.")
    if init == "soft":
        raise PromptTuneError("--init soft: DATA has no soft prompt to start from; use labels or vocab.")
    return init or "labels"


def search_config(method: str, **flags) -> PezConfig | GcgConfig | None:
    """The search's settings from flags (None: its default); a flag of another method is an error naming it."""
    given = {k: v for k, v in flags.items() if v is not None}
    if method not in SEARCHES:
        for key in ("steps", "eval_every", *ONLY):  # the flags left unset by default: given, they would be ignored
            if key in given:
                raise PromptTuneError(
                    f"--{key.replace('_', '-')}: applies to a search (--method pez or gcg), not {method}."
                )
        return None
    for key, (flag, owner) in ONLY.items():
        if key in given and owner != method:
            raise PromptTuneError(f"{flag}: applies to --method {owner}, not {method}.")
    return CONFIGS[method](**given)


def verbalizer_flag(verb: Verbalizer) -> str:
    return ";".join(f"{label}={'|'.join(verb.words[label])}" for label in verb.labels)


def harden(
    source: str | Path,
    out: str | Path,
    *,
    method: str = "nearest",
    data: str | Path | None = None,
    val: str | Path | None = None,
    limit: int | None = None,
    tokens: int | None = None,
    init: str | None = None,
    init_text: str | None = None,
    template: str | None = None,
    vocab: str = "readable",
    pez: PezConfig | None = None,
    search: PezConfig | GcgConfig | None = None,
    overwrite: bool = False,
    backbone: Backbone | str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict:
    """Write a hard-prompt template found from ``source`` (an artifact folder or a data file) to ``out``.

    Returns the JSON-able report (accuracies of the hardened, soft and hand-written prompts on the same rows).
    """
    t0 = time.perf_counter()
    source, out = Path(source), Path(out)
    if not source.exists():
        raise PromptTuneError(f"ARTIFACT|DATA {source}: no such artifact folder or data file.")
    is_artifact = source.is_dir()
    init = _check_flags(method, is_artifact, data, tokens, init, template, init_text)
    if vocab not in VOCABS:
        raise PromptTuneError(f"--vocab {vocab}: unknown; choose one of {', '.join(VOCABS)}.")
    check_limit(limit)
    config = search or pez or search_config(method)
    if method in SEARCHES and not isinstance(config, CONFIGS[method]):
        raise PromptTuneError(f"--method {method}: its settings are a {CONFIGS[method].__name__}, not {config!r}.")
    check_template_output(out, overwrite)
    rows_path = data if is_artifact else source
    rows = load_rows(rows_path).limit(limit) if rows_path is not None else None
    val_rows = load_rows(val) if val is not None else None
    for checked in (rows, val_rows):  # labels checked before the model loads; fields once the template is known
        if checked is not None:
            check_fields(checked, [], need_label=True)
    train_rows = select_rows = None
    if method in SEARCHES:
        train_rows, select_rows = split_validation(rows, 0.1, config.seed)

    soft_task: PromptTask | None = None
    if is_artifact:
        soft_task = load_prompt_task(source, backbone, dtype=dtype, device=device)
        bb, base = soft_task.backbone, soft_task.model.template
        tables = soft_tables(soft_task, str(source))
        verb = plain_verbalizer(soft_task.model.verbalizer)
    else:
        bb = backbone if isinstance(backbone, Backbone) else Backbone.load(backbone, dtype=dtype, device=device)
    candidates = Vocabulary.of(bb, vocab)

    result = None
    if method == "nearest":
        ids = {k: candidates.project(t).tolist() for k, t in tables.items()}
    else:
        if soft_task is not None and init == "soft":
            searched = with_tables(soft_task, tables)
        elif soft_task is not None:
            n = tokens or soft_task.model.compiled.num_virtual_tokens
            start = {"num_virtual_tokens": n, "init": init, "init_text": init_text}
            searched = PromptTask.create(bb, verb.labels, TABLE_METHOD, start, base, verbalizer=verb, seed=config.seed)
        else:
            start = {"num_virtual_tokens": tokens or DEFAULT_TOKENS, "init": init, "init_text": init_text}
            searched = PromptTask.for_data(bb, train_rows, TABLE_METHOD, start, config.seed, template)
            base, verb = searched.model.template, plain_verbalizer(searched.model.verbalizer)
        if init != "soft":  # start from real tokens of the candidate set, not from a raw init vector
            start_from_tokens(searched, candidates)
        result = SEARCHES[method](searched, candidates, train_rows, select_rows, config, callbacks)
        ids = result.ids

    texts, roundtrip = slot_texts(bb, ids)
    hardened = with_text(base, texts)
    report_rows: Dataset | None = rows
    report_source = f"{data} (--data)"
    if val_rows is not None:
        report_rows, report_source = val_rows, f"{val} (--val)"
    elif method in SEARCHES:
        report_rows, report_source = select_rows, "the seeded 10% held out of training, which also picked the step"
    scored = accuracy(hard_task(bb, hardened, verb), report_rows)
    start_texts, start = None, None  # a search's start written out (its step 0), on the same rows
    if result is not None:
        start_texts = slot_texts(bb, result.start_ids)[0]
        same = result.start_ids == ids
        start = scored if same else accuracy(hard_task(bb, with_text(base, start_texts), verb), report_rows)
    acc = {
        "hardened": scored,
        "start": start,  # what the search added to where it began
        "soft": accuracy(soft_task, report_rows, calibrate=True) if soft_task is not None else None,
        "soft_calibrated": soft_task is not None and soft_task.model.verbalizer.calibration is not None,
        "hand_written": accuracy(hard_task(bb, base, verb), report_rows),
        "rows": len(report_rows) if report_rows is not None else 0,
        "rows_source": report_source if report_rows is not None else None,
    }
    report = {
        "out": str(out),
        "method": method,
        "source": str(source),
        "model": bb.model_id,
        "vocab": vocab,
        "tokens": sum(len(v) for v in ids.values()),
        "token_ids": {str(k): v for k, v in ids.items()},
        "text": {str(k): v for k, v in texts.items()},
        "start_text": {str(k): v for k, v in start_texts.items()} if start_texts else None,
        "roundtrip": roundtrip,
        "accuracy": acc,
        "verbalizer": verbalizer_flag(verb),
    }
    for name in SEARCHES:  # the search's settings and history under its own name; null for the others
        report[name] = None if name != method else search_report(config, result, init, train_rows, select_rows)
    report["seconds"] = time.perf_counter() - t0
    _write(out, hardened, report)
    return report


def search_report(config, result, init: str | None, train_rows: Dataset, select_rows: Dataset) -> dict:
    settings = {k: v for k, v in vars(config).items() if k not in ("lr", "seed", "eval_every")}
    return settings | {
        "init": init,
        "lr": result.lr,
        "eval_every": config.eval_every,
        "best_step": result.best_step,
        "selection_accuracy": result.selection_accuracy,
        "initial_selection_accuracy": result.initial_accuracy,
        "n_train": len(train_rows),
        "n_select": len(select_rows),
        "seconds": result.seconds,
        "history": result.history,
    }


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _write(out: Path, hardened, report: dict) -> None:
    acc = report["accuracy"]
    start = f", the search's start {_fmt(acc['start'])}" if acc.get("start") is not None else ""
    figures = (
        f"accuracy {_fmt(acc['hardened'])} (soft prompt {_fmt(acc['soft'])}, hand-written {_fmt(acc['hand_written'])}"
        f"{start}) on {acc['rows']} rows: {acc['rows_source']}"
        if acc["rows"]
        else "not scored (no rows given)"
    )
    summary = f"hardened by --method {report['method']} from {report['source']}; {figures}."
    comments = [
        summary,
        f"{report['tokens']} tokens of {report['model']} (--vocab {report['vocab']}); "
        f"they tokenize back exactly: {'yes' if report['roundtrip'] else 'no'}.",
        f"Scored without calibration, label words: prompttune eval {out} DATA --no-calibrate "
        f"--verbalizer '{report['verbalizer']}'",
    ]
    p = report.get(report["method"])
    if p:
        lr = f", lr {p['lr']:.4g}" if p["lr"] is not None else ""
        comments.append(
            f"{report['method']}: {p['steps']} steps{lr}, batch {p['batch_size']}, init {p['init']}, best step "
            f"{p['best_step']} ({p['n_train']} training rows, {p['n_select']} selection rows)."
        )
    comments = [c.replace("\n", " ") for c in comments]
    write_template(out, replace(hardened, description=summary), comments)
