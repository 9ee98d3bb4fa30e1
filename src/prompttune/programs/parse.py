"""Reading a model's reply into a step's typed output fields.

The reply is expected as ``name: value`` lines in the order of the outputs (the prompt asks for that and
starts the reply with the first name); a step with one output also accepts a bare value. Each value is
then read by its field's kind:

- label: the option it equals (case and surrounding punctuation ignored), else the one option it names
  as a word; none or several is an error;
- number: the first number in the text (``1,234`` and ``-0.5`` included), an int when it has no point;
- json: the whole value as JSON, else the first ``{...}`` or ``[...]`` span in it;
- text: the value up to its first blank line.

A failure raises OutputParseError naming the field, what was expected and (shortened) what came back;
the module retries with that message as feedback (modules.py).
"""

from __future__ import annotations

import json
import re

from prompttune.core.errors import DataError
from prompttune.programs.signature import Field

SHOWN_CHARS = 120
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
_STRIP = " \t\n\"'`.,;:!?*()[]"


class OutputParseError(DataError):
    """The model's reply does not give a field in the form its kind needs."""

    def __init__(self, field: str, expected: str, reply: str):
        shown = reply if len(reply) <= SHOWN_CHARS else reply[:SHOWN_CHARS] + "..."
        self.field, self.expected, self.reply = field, expected, reply
        super().__init__(f"output {field!r}: expected {expected}; the model replied {shown!r}.")


def parse_reply(outputs: tuple[Field, ...], reply: str, shown=lambda name: name) -> dict:
    """The typed value of every output field in ``reply`` (which includes the prompt's answer start).

    ``shown(name)``: the name the prompt showed the field under (its prefix), which the reply repeats.
    """
    values = split_fields([f.name for f in outputs], reply, shown)
    return {f.name: parse_value(f, values.get(f.name), reply) for f in outputs}


def split_fields(names: list[str], reply: str, shown=lambda name: name) -> dict[str, str]:
    """``name: value`` sections of the reply; a bare reply is the value of a single field."""
    marks = []
    for name in names:
        m = re.search(rf"(?im)^[ \t*#]*{re.escape(shown(name))}[ \t*]*:", reply)
        if m:
            marks.append((m.start(), m.end(), name))
    if not marks:
        return {names[0]: reply} if len(names) == 1 else {}
    marks.sort()
    out = {}
    for i, (_, end, name) in enumerate(marks):
        stop = marks[i + 1][0] if i + 1 < len(marks) else len(reply)
        out[name] = reply[end:stop]
    return out


def parse_value(field: Field, value: str | None, reply: str):
    if value is None or not value.strip():
        raise OutputParseError(field.name, f"a line '{field.name}: ...'", reply)
    if field.kind == "label":
        return parse_label(field, value, reply)
    if field.kind == "number":
        m = _NUMBER.search(value)
        if not m:
            raise OutputParseError(field.name, "a number", reply)
        text = m.group(0).replace(",", "")
        return float(text) if any(c in text for c in ".eE") else int(text)
    if field.kind == "json":
        return parse_json(field, value, reply)
    return value.strip().split("\n\n")[0].strip()


def parse_label(field: Field, value: str, reply: str) -> str:
    text = value.strip().strip(_STRIP).lower()
    by_lower = {o.lower(): o for o in field.options}
    if text in by_lower:
        return by_lower[text]
    named = [o for o in field.options if re.search(rf"(?<!\w){re.escape(o.lower())}(?!\w)", text)]
    if len(named) == 1:
        return named[0]
    raise OutputParseError(field.name, "one of " + ", ".join(field.options), reply)


def parse_json(field: Field, value: str, reply: str):
    text = value.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    for i, c in enumerate(text):
        if c in "{[":
            try:
                return decoder.raw_decode(text[i:])[0]
            except json.JSONDecodeError:
                continue
    raise OutputParseError(field.name, "a JSON value", reply)
