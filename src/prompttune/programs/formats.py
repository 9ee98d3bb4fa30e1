"""The prompt's layout and field names as a search dimension (``mipro`` and ``random-search``).

A small model is far more sensitive to how a prompt is laid out than to its instruction. On SST-2 with the
135M default decoder and the same 8 demos (validation rows 2,001-2,400 of the shared file):

    chat layout, fields "text" / "label"                          0.57-0.72 (the optimizer's runs)
    plain layout  "Text: ...\\nLabel: positive"                     0.53
    plain layout  "Text: ...\\nSentiment: positive"                 0.85
    plain layout  "Movie review: ...\\nSentiment: positive"         0.885

The output field's name carries most of it. The model cannot name it (asked to, the 135M model copies its
example), so the names tried are the field's own, those the user gives (``--prefix label=Sentiment``) and a
short list of the names classification tasks usually have (``OUTPUT_NAMES``), each scored like any
candidate. A candidate format is a patch of a predictor's state: ``{"layout": ..., "prefixes": {...}}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prompttune.core.errors import DataError
from prompttune.programs.modules import MAX_PREFIX_CHARS, Predict

# Names tried for a one-output step's output field in the plain layout; generic, not tuned to one data set.
OUTPUT_NAMES = ("Answer", "Category", "Sentiment", "Topic", "Emotion", "Relation", "Intent", "Class", "Verdict")
FORMATS_KEPT = 3  # formats kept per predictor after screening, for the main search
MAX_GIVEN_PREFIXES = 32


def parse_prefixes(specs: Sequence[str]) -> dict[str, list[str]]:
    """``--prefix FIELD=NAME`` values: candidate display names per field."""
    if len(specs) > MAX_GIVEN_PREFIXES:
        raise DataError(f"--prefix: {len(specs)} given; at most {MAX_GIVEN_PREFIXES}.")
    out: dict[str, list[str]] = {}
    for spec in specs:
        field, sep, name = (s.strip() for s in str(spec).partition("="))
        if not sep or not field or not name or ":" in name or "\n" in name or len(name) > MAX_PREFIX_CHARS:
            raise DataError(
                f"--prefix {spec!r}: write FIELD=NAME, e.g. 'label=Sentiment' (a one-line name without ':', "
                f"at most {MAX_PREFIX_CHARS} characters)."
            )
        out.setdefault(field, []).append(name)
    return out


def check_prefix_fields(program, given: Mapping[str, list[str]]) -> None:
    fields = {n for _, p in program.named_predictors() for n in (*p.signature.input_names, *p.signature.output_names)}
    for name in given:
        if name not in fields:
            raise DataError(f"--prefix {name}=...: the program has no field {name!r} (it has {sorted(fields)}).")


def format_candidates(predictor: Predict, given: Mapping[str, list[str]] | None = None) -> list[dict]:
    """The predictor's own format first, then plain layouts: its own input names (a hand-written program's
    ``Movie review`` stays while the output name varies) or the first given one, then each output name."""
    given = given or {}
    own = {"layout": predictor.layout, "prefixes": dict(predictor.prefixes)}
    out = [own]
    inputs = {f: n for f, n in predictor.prefixes.items() if f in predictor.signature.input_names}
    inputs |= {f: names[0] for f, names in given.items() if f in predictor.signature.input_names and names}
    outputs = predictor.signature.outputs
    names: list[str] = []
    if len(outputs) == 1:
        field = outputs[0].name
        names = [*given.get(field, []), field.replace("_", " ").capitalize(), *OUTPUT_NAMES]
    for name in dict.fromkeys(names) if names else [None]:
        prefixes = {**inputs, **({outputs[0].name: name} if name else {})}
        patch = {"layout": "plain", "prefixes": prefixes}
        if patch not in out:
            out.append(patch)
    for field, extra in given.items():  # further input names of the user's, with the first output name
        if field in predictor.signature.input_names:
            for name in extra[1:]:
                patch = {"layout": "plain", "prefixes": {**out[1]["prefixes"], field: name}}
                if patch not in out:
                    out.append(patch)
    return out


def describe(patch: dict) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in sorted(patch["prefixes"].items()))
    return patch["layout"] + (f" ({shown})" if shown else "") + (", calibrated" if patch.get("calibrate") else "")
