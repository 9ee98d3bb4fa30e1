"""A one-step program whose answer is a label set, written as a template read out by label words.

The template is the prompt ``BackboneLM`` shows the model for that program, laid out the same way (a
``plain`` step as plain text, each field under its shown name): the step's system text (instruction,
fields, reply format) as the system turn, each demo as a user turn and an
assistant turn (``label: positive``), the row's fields as the user turn, and the answer starting with the
output's name. A label's score after it is what ``BackboneLM.choose`` compares, so the template scores a row
as the program does; ``prompttune eval``, the registry and ``compare`` read it like any template.
"""

from __future__ import annotations

from prompttune.core.errors import DataError
from prompttune.core.template import Template
from prompttune.programs.lm import _raw
from prompttune.programs.modules import Module, Predict


def as_template(program: Module, label_of: dict[str, str] | None = None, description: str = "") -> Template:
    """The program's prompt as a template; ``label_of`` maps a demo's answer back to its label (identity)."""
    steps = program.named_predictors()
    step = steps[0][1] if len(steps) == 1 else None
    if getattr(program, "members", None):
        raise DataError(
            f"an ensemble of {len(program.members)} prompts runs as a program (`prompttune run`); a template holds "
            "one prompt: optimize without --ensemble to get one."
        )
    if step is None or type(step) is not Predict:
        raise DataError(
            "a program written as a template has one Predict step (no chain of thought: its reasoning is generated "
            f"per row); this one has {[type(p).__name__ for _, p in steps]}."
        )
    outs = step.signature.outputs
    if len(outs) != 1 or outs[0].kind != "label":
        raise DataError(
            f"{step.signature}: a template is read out by label words; give the step one output that is a label set "
            "(e.g. 'text -> label: one of positive, negative')."
        )
    out, inputs = outs[0], step.signature.input_names
    label_of = label_of or {}
    demos = [
        {**{n: d[n] for n in inputs}, "label": label_of.get(str(d[out.name]), str(d[out.name]))}
        for d in step.demos
        if out.name in d and all(n in d for n in inputs)
    ]
    plain = step.layout == "plain"
    return Template(
        user="\n".join(f"{_raw(step.shown(n))}: {{{{ {n} }}}}" for n in inputs) + ("\n" if plain else ""),
        system=_raw(step.system_text()) or None,
        # the space before the label word belongs to the label (as choose scores it)
        answer=f"{_raw(step.shown(out.name))}: ",
        demos=tuple(demos),
        description=description,
        chat=not plain,
    )
