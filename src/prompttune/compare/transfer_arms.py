"""Transfer arms for `prompttune compare`: prompt tuning on the cell's rows, its prompt started from a pack's.

``mpt-transfer`` and ``spot-transfer`` (issue 17) are the prompt-tuning arm in every respect (method, learning
rate, step budget, read-out) except the start: before the first step the cell's prompt is set from the pack
given with ``-o mpt-transfer.pack=PACK`` (``multitask.transfer``), its shared prompt or, with
``-o mpt-transfer.source-task=NAME``, one source task's prompt (``mixture``: ATTEMPT's input-dependent mixture of
the pack's source prompts, ``multitask.attempt``). So transfer shows up in the same tables and accuracy-vs-rows
curves as every other method.

The pack is checked when the arms are resolved, before any cell runs: it must exist, be a pack of the arm's
kind (an ``mpt`` pack for ``mpt-transfer``), name a source task it holds and have been trained on the backbone
the comparison runs on. Its weights' checksum is part of the arm, so a pack retrained at the same path reruns
the cells instead of reusing results of the old one.
"""

from __future__ import annotations

from pathlib import Path

from prompttune.core import defaults
from prompttune.core.errors import PromptTuneError

# arm name -> the pack strategy it starts from
TRANSFERS = {"mpt-transfer": "mpt", "spot-transfer": "spot"}
START_KEYS = {"pack": "pack", "source_task": "source_task", "source-task": "source_task"}


def is_transfer(name: str) -> bool:
    return name in TRANSFERS


def model_id(model: str | None) -> str:
    """The backbone id a cell's artifacts record for ``--model`` (as ``defaults.resolve`` gives it, loading nothing)."""
    name = defaults.ALIASES.get(model or defaults.DEFAULT_DECODER, model or defaults.DEFAULT_DECODER)
    if name in (defaults.DEFAULT_DECODER, defaults.DEFAULT_ENCODER):
        return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def split_start(name: str, options: dict, model: str | None) -> tuple[dict, dict]:
    """(the arm's other options, where its prompt starts: pack path, source task, the pack's weights checksum).

    Errors name the option (``-o NAME.pack=PACK``) and say what to give instead.
    """
    from prompttune.core.artifact import read
    from prompttune.multitask.transfer import source_prompt

    rest = {k: v for k, v in options.items() if k not in START_KEYS}
    start = {START_KEYS[k]: str(v) for k, v in options.items() if k in START_KEYS}
    flag = f"-o {name}.pack"
    want = TRANSFERS[name]
    if "pack" not in start:
        raise PromptTuneError(
            f"--methods {name}: give the pack it starts from with {flag}=PACK (a `prompttune train-multi "
            f"--method {want}` output)."
        )
    pack = Path(start["pack"]).expanduser().resolve()
    flag = f"{flag}={start['pack']}"
    try:
        manifest, _ = read(pack)
        info = manifest.get("pack")
        if not info:
            raise PromptTuneError("a single-task artifact, not a pack")
        if info.get("strategy") != want:
            other = [a for a, s in TRANSFERS.items() if s == info.get("strategy")]
            instead = f"give it to {other[0]}" if other else f"`prompttune train-multi --method {want}` makes one"
            raise PromptTuneError(
                f"a pack of kind {info.get('strategy')}, and {name} starts from a pack of kind {want} ({instead})"
            )
        source_prompt(pack, start.get("source_task"))  # an unknown --source-task: an error now
    except PromptTuneError as err:
        raise PromptTuneError(f"{flag}: {err}") from None
    trained_on, runs_on = manifest["backbone"]["id"], model_id(model)
    if trained_on != runs_on:
        raise PromptTuneError(
            f"{flag}: trained on backbone {trained_on}, but the comparison runs on {runs_on}; run it with --model "
            f"{trained_on}, or train a pack on {runs_on}."
        )
    # the soft tokens must match the pack's: its size is the arm's default
    rest.setdefault("num_virtual_tokens", info.get("num_virtual_tokens", 16))
    start = {
        "pack": str(pack),
        "source_task": start.get("source_task"),
        "weights_sha256": manifest.get("weights_sha256"),
    }
    return rest, start
