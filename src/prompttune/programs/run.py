"""The library verbs behind ``prompttune optimize`` and ``prompttune run``: files in, a saved program out.

A search journals every model call's answer in ``OUT/search.jsonl`` (journal.py): the same command run
again after a kill replays them and goes on from there (``max_seconds`` counts the new run's time only).

A signature's free-text output that the training rows fill with a few distinct values (at most
LABEL_SET_MAX, each repeated) becomes a label set of those values, in order of first appearance:
``'text -> label'`` on SST-2 is ``'text -> label: one of negative, positive'``, so the in-process model
chooses a label by score instead of writing free text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from prompttune.core import atomic
from prompttune.core.data import load_rows
from prompttune.core.errors import DataError
from prompttune.programs.ensemble import Ensemble
from prompttune.programs.files import Pipeline, is_program_dir, load_program, save_program
from prompttune.programs.formats import check_prefix_fields, parse_prefixes
from prompttune.programs.journal import JOURNAL_FILE, JournaledLM, fingerprint
from prompttune.programs.lm import LM
from prompttune.programs.metrics import make_metric
from prompttune.programs.optimizers import OPTIMIZERS, optimize
from prompttune.programs.search import SearchConfig, output_names, run_rows
from prompttune.programs.signature import MAX_OPTIONS, Field, Signature

MAX_ROWS = 100_000  # per data file
LABEL_SET_MAX = 20


def make_lm(model: str | None = None, base_url: str | None = None, api_key: str | None = None, mode: str = "chat",
            dtype: str | None = None, device: str | None = None, guided: bool | str | None = None) -> LM:  # fmt: skip
    """The in-process backbone (``model``), or an OpenAI-compatible server at ``base_url`` serving ``model``
    (``guided``: replies' forms sent as ``guided_grammar`` or ``response_format``, lm_http.py)."""
    from prompttune.programs.lm_http import GUIDED

    if isinstance(guided, str) and guided not in GUIDED:
        raise DataError(f"--guided {guided}: use one of {', '.join(GUIDED)}.")
    if base_url:
        from prompttune.programs.lm_http import OpenAILM

        if not model:
            raise DataError("--base-url: give --model too, the name the server knows the model by.")
        return OpenAILM(base_url, model, api_key=api_key, mode=mode, guided=guided)
    if guided:
        raise DataError("--guided: only with --base-url (the in-process model always holds replies to their form).")
    from prompttune.core.backbone import Backbone
    from prompttune.programs.lm import BackboneLM

    return BackboneLM(Backbone.load(model, dtype=dtype, device=device))


def _ours(path: Path) -> bool:
    """An optimize output: a saved program, or the journal of a search (``--overwrite`` replaces either)."""
    return is_program_dir(path) or (Path(path) / JOURNAL_FILE).is_file()


def read_rows(path: str | Path, flag: str, limit: int | None = None) -> list[dict]:
    rows = [dict(r.fields) for r in load_rows(path)]
    if limit is not None:
        if limit < 1:
            raise DataError(f"{flag} limit {limit}: give at least 1 row.")
        rows = rows[:limit]
    if len(rows) > MAX_ROWS:
        raise DataError(f"{flag} {path}: {len(rows):,} rows; at most {MAX_ROWS:,} (use a --limit).")
    return rows


def with_label_sets(program: Pipeline, rows: list[dict]) -> Pipeline:
    """A copy whose free-text outputs become label sets where the rows hold a few repeated values."""
    new = program.copy()
    for step in new.steps:
        outs = []
        for f in step.signature.outputs:
            values = [str(r[f.name]) for r in rows if f.name in r]
            distinct = list(dict.fromkeys(values))
            few = len(values) == len(rows) and 1 < len(distinct) <= min(LABEL_SET_MAX, MAX_OPTIONS, len(values) // 2)
            outs.append(Field(f.name, f.description, "label", tuple(distinct)) if f.kind == "text" and few else f)
        step.signature = replace(step.signature, outputs=tuple(outs))
        Signature(step.signature.inputs, step.signature.outputs, step.signature.instruction)  # checks itself
    return new


def optimize_files(
    program: str,
    train: str | Path,
    val: str | Path,
    metric: str,
    optimizer: str,
    out: str | Path,
    lm: LM | Callable[[], LM],
    config: SearchConfig = SearchConfig(),
    overwrite: bool = False,
    limit: int | None = None,
    instructions: tuple[str, ...] = (),
    progress=None,
    prefixes: tuple[str, ...] = (),
) -> dict:
    """Optimize PROGRAM on the files, save ``out/program.json`` and return the summary (scores, counts)."""
    out = Path(out)
    journal = out / JOURNAL_FILE
    resuming = journal.is_file() and not is_program_dir(out) and not overwrite  # a search killed before its end
    if not resuming:
        atomic.check_output_dir(out, "--out", _ours, "saved program", overwrite)
    prog, _ = load_program(program)
    if isinstance(prog, Ensemble):
        raise DataError(f"PROGRAM {program}: an ensemble; optimize one program (--ensemble N builds the ensemble).")
    train_rows, val_rows = read_rows(train, "--train", limit), read_rows(val, "--val", limit)
    prog = with_label_sets(prog, train_rows)
    targets = [n for n in prog.steps[-1].signature.output_names if all(n in r for r in val_rows)]
    scorer = make_metric(metric, targets)
    kw = {"instructions": tuple(instructions)} if optimizer == "mipro" else {}
    if instructions and optimizer != "mipro":
        raise DataError("--instruction: candidate instructions are searched by --optimizer mipro only.")
    given = parse_prefixes(prefixes)
    check_prefix_fields(prog, given)
    if given and optimizer not in ("mipro", "random-search"):
        raise DataError("--prefix: field names are searched by --optimizer mipro and random-search only.")
    if optimizer in ("mipro", "random-search"):
        kw["prefixes"] = given
    if optimizer not in OPTIMIZERS:
        raise DataError(f"--optimizer {optimizer!r}: use one of {', '.join(OPTIMIZERS)}.")
    lm = lm if isinstance(lm, LM) else lm()
    if overwrite and journal.is_file():
        journal.unlink()
    search = fingerprint(
        program=prog.to_dict(), train=train_rows, val=val_rows, metric=metric, optimizer=optimizer, lm=lm.name,
        config={k: v for k, v in asdict(config).items() if k != "max_seconds"}, **kw,
    )  # fmt: skip
    journaled = JournaledLM(lm, journal, search)
    result = optimize(optimizer, prog, train_rows, val_rows, scorer, journaled, config, progress, **kw)
    summary = {
        "optimizer": optimizer,
        "metric": metric,
        "lm": lm.name,
        **result.summary(),
        "config": asdict(config),
        "train": str(train),
        "val": str(val),
        "calls_answered_from_journal": journaled.replayed,
    }
    save_program(result.program, out, **summary)
    return {**summary, "out": str(out)}


def run_file(
    program: str | Path,
    data: str | Path,
    lm: LM | Callable[[], LM],
    metric: str | None = None,
    limit: int | None = None,
) -> dict:
    """Run a program over a data file: each row's outputs, and the metric where the rows hold the outputs."""
    prog, record = load_program(program)
    rows = read_rows(data, "DATA", limit)
    metric = metric or record.get("metric") or "accuracy"
    targets = [n for n in prog.steps[-1].signature.output_names if all(n in r for r in rows)]
    scorer = make_metric(metric, targets) if targets or metric not in ("accuracy", "em", "f1") else None
    from prompttune.programs.modules import using

    lm = lm if isinstance(lm, LM) else lm()
    outputs, total, failed = [], 0.0, 0
    with using(lm):
        preds = run_rows(prog, rows)
        for row, pred in zip(rows, preds, strict=True):
            failed += pred is None
            outputs.append(None if pred is None else {k: v for k, v in pred.items() if k in output_names(prog)})
            if scorer is not None and pred is not None:
                total += scorer(row, pred)
    report = {"rows": len(rows), "unparsed": failed, "outputs": outputs, "metric": metric if scorer else None}
    report["score"] = round(total / len(rows), 6) if scorer else None
    if "best_val_score" in record:
        report["saved_val_score"] = record["best_val_score"]
    return report
